-- One database per service, as in production (run once by the postgres
-- image on an empty volume).
CREATE DATABASE ticketing_auth;
CREATE DATABASE ticketing_tickets;
CREATE DATABASE ticketing_orders;
CREATE DATABASE ticketing_expiration;
CREATE DATABASE ticketing_payments;
