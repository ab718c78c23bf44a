// Starts Swagger UI on the spec this server generates (no inline script, so
// the page's Content-Security-Policy can forbid them).
window.ui = SwaggerUIBundle({
  url: "/api/docs/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
});
