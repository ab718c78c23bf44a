//! The payment gateway seam: Stripe over HTTP, or an offline gateway with
//! Stripe's test-mode behaviour for running without a key.

use std::time::Duration;

use serde::Deserialize;
use shared::http::BoxFuture;
use shared::money::Money;

/// A hold to place on a card.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub amount: Money,
    pub currency: String,
    /// A card token such as `tok_visa`.
    pub token: String,
    /// The same key always yields the same authorization (one per payment).
    pub idempotency_key: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The card was declined (HTTP 402 to the client).
    #[error("declined: {0}")]
    Declined(String),
    /// The request was refused as invalid (bad token): the client's fault.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The gateway could not be reached or failed; retry later. `cause`:
    /// the HTTP client's or the decoder's error, when one is underneath.
    #[error("gateway unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl GatewayError {
    /// Unavailable, for the reason `message`.
    pub fn unavailable(message: impl Into<String>) -> GatewayError {
        GatewayError::Unavailable {
            message: message.into(),
            cause: None,
        }
    }

    /// Unavailable while `doing`, because of `cause`.
    pub fn unavailable_because(
        doing: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> GatewayError {
        GatewayError::Unavailable {
            message: doing.into(),
            cause: Some(Box::new(cause)),
        }
    }
}

/// What became of a hold on a card when it was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The held amount was taken.
    Captured,
    /// The hold was released; nothing was charged.
    Voided,
}

/// Holds (authorizations) that are later captured or voided, and refunds
/// of captured ones.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Short name for logs and start-up messages.
    fn name(&self) -> &'static str;
    /// Places a hold for the amount on the card (no money moves yet);
    /// returns the authorization's id. The same idempotency key always
    /// yields the same authorization.
    fn authorize(&self, req: ChargeRequest) -> BoxFuture<'_, Result<String, GatewayError>>;
    /// Takes the held amount, or releases the hold (`Settled::Voided`).
    /// Settling again the same way with the same key changes nothing.
    fn settle(
        &self,
        authorization_id: String,
        how: Settled,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<(), GatewayError>>;
    /// Refunds a captured authorization in full; returns the refund id.
    fn refund(
        &self,
        authorization_id: String,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<String, GatewayError>>;
}

/// Stripe's test-mode behaviour, offline: `tok_visa` and `tok_mastercard`
/// succeed, `tok_chargeDeclined` is declined, anything else is invalid. Ids
/// derive from the idempotency key, so a retried authorization is the same.
pub struct OfflineGateway;

fn offline_id(prefix: &str, key: &str) -> String {
    let clean: String = key.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("{prefix}_offline_{clean}")
}

/// What Stripe's test mode does with a card token: the id of the object
/// (`prefix`) a good card yields, or the decline or refusal.
fn offline_card(req: &ChargeRequest, prefix: &str) -> Result<String, GatewayError> {
    match req.token.as_str() {
        "tok_visa" | "tok_mastercard" => Ok(offline_id(prefix, &req.idempotency_key)),
        "tok_chargeDeclined" => Err(GatewayError::Declined("Your card was declined.".into())),
        other => Err(GatewayError::Invalid(format!("No such token: '{other}'"))),
    }
}

impl PaymentGateway for OfflineGateway {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn authorize(&self, req: ChargeRequest) -> BoxFuture<'_, Result<String, GatewayError>> {
        Box::pin(async move { offline_card(&req, "pi") })
    }

    fn settle(
        &self,
        authorization_id: String,
        _how: Settled,
        _idempotency_key: String,
    ) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            if authorization_id.starts_with("pi_offline_") {
                Ok(())
            } else {
                Err(GatewayError::Invalid(format!(
                    "No such payment_intent: '{authorization_id}'"
                )))
            }
        })
    }

    fn refund(
        &self,
        _authorization_id: String,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<String, GatewayError>> {
        Box::pin(async move { Ok(offline_id("re", &idempotency_key)) })
    }
}

/// The real Stripe API (`/v1/payment_intents`, `/v1/refunds`), form-encoded, with the
/// secret key as bearer token and an `Idempotency-Key` on every request.
pub struct StripeGateway {
    client: reqwest::Client,
    base_url: String,
    /// Never printed: `Debug` shows it redacted.
    secret_key: secrecy::SecretString,
}

#[derive(Deserialize)]
struct StripeObject {
    id: String,
    /// A PaymentIntent's state (`requires_capture`, `succeeded`, `canceled`…).
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct StripeErrorBody {
    error: StripeErrorDetail,
}

#[derive(Deserialize)]
struct StripeErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl StripeGateway {
    /// `base_url` is `https://api.stripe.com` in production.
    pub fn new(
        base_url: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(StripeGateway {
            client,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            secret_key: secrecy::SecretString::from(secret_key.into()),
        })
    }

    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, &str)],
    ) -> Result<String, GatewayError> {
        self.post_object(path, idempotency_key, form)
            .await
            .map(|o| o.id)
    }

    async fn post_object(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, &str)],
    ) -> Result<StripeObject, GatewayError> {
        let res = self
            .client
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&self.secret_key))
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(|e| {
                GatewayError::unavailable_because(format!("cannot reach Stripe ({path})"), e)
            })?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| {
            GatewayError::unavailable_because(format!("cannot read Stripe's answer ({path})"), e)
        })?;
        if status.is_success() {
            return serde_json::from_slice::<StripeObject>(&body).map_err(|e| {
                GatewayError::unavailable_because(format!("unexpected Stripe response ({path})"), e)
            });
        }
        let detail = serde_json::from_slice::<StripeErrorBody>(&body)
            .ok()
            .map(|b| b.error);
        let message = detail
            .as_ref()
            .and_then(|d| d.message.clone())
            .unwrap_or_else(|| format!("Stripe answered {status}"));
        let card_error = detail.as_ref().and_then(|d| d.kind.as_deref()) == Some("card_error");
        Err(match status.as_u16() {
            402 => GatewayError::Declined(message),
            400 | 404 if card_error => GatewayError::Declined(message),
            400 | 404 => GatewayError::Invalid(message),
            // 401 (bad key), 409 (idempotent request in flight), 429, 5xx.
            _ => GatewayError::unavailable(message),
        })
    }
}

impl PaymentGateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }

    /// A PaymentIntent created and confirmed at once with manual capture
    /// (`/v1/payment_intents`, card only, the token as the card's data).
    fn authorize(&self, req: ChargeRequest) -> BoxFuture<'_, Result<String, GatewayError>> {
        Box::pin(async move {
            let amount = req.amount.cents().to_string();
            let intent = self
                .post_object(
                    "/v1/payment_intents",
                    &req.idempotency_key,
                    &[
                        ("amount", &amount),
                        ("currency", &req.currency),
                        ("capture_method", "manual"),
                        ("confirm", "true"),
                        ("payment_method_types[]", "card"),
                        ("payment_method_data[type]", "card"),
                        ("payment_method_data[card][token]", &req.token),
                        ("description", &req.description),
                    ],
                )
                .await?;
            match intent.status.as_deref() {
                Some("requires_capture") => Ok(intent.id),
                // 3-D Secure and the like need the buyer, which a
                // server-side payment cannot involve.
                Some("requires_action") => Err(GatewayError::Declined(
                    "This card needs an authentication step that is not supported".into(),
                )),
                other => Err(GatewayError::Declined(format!(
                    "The card could not be authorized (status {})",
                    other.unwrap_or("unknown")
                ))),
            }
        })
    }

    /// `/v1/payment_intents/{id}/capture` or `/cancel`.
    fn settle(
        &self,
        authorization_id: String,
        how: Settled,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let (action, done) = match how {
                Settled::Captured => ("capture", "succeeded"),
                Settled::Voided => ("cancel", "canceled"),
            };
            let intent = self
                .post_object(
                    &format!("/v1/payment_intents/{authorization_id}/{action}"),
                    &idempotency_key,
                    &[],
                )
                .await?;
            if intent.status.as_deref() == Some(done) {
                Ok(())
            } else {
                Err(GatewayError::unavailable(format!(
                    "Stripe left the payment intent {} as {:?} after {action}",
                    intent.id, intent.status
                )))
            }
        })
    }

    /// `/v1/refunds` for the captured PaymentIntent.
    fn refund(
        &self,
        authorization_id: String,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<String, GatewayError>> {
        Box::pin(async move {
            self.post(
                "/v1/refunds",
                &idempotency_key,
                &[("payment_intent", &authorization_id)],
            )
            .await
        })
    }
}
