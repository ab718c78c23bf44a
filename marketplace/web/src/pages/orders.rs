//! The buyer's orders, an order's page with its countdown, paying for it
//! and cancelling it.

use super::*;

// ------------------------------------------------------------------- orders

#[derive(Template)]
#[template(path = "orders.html")]
struct OrdersPage {
    layout: Layout,
    orders: Vec<OrderView>,
}

pub(crate) async fn my_orders(State(web): State<Shared>, ctx: Ctx) -> PageResult {
    let (layout, _) = ctx.signed_in_layout(&web, "My orders", "/orders").await?;
    let reply = ctx.call(&web, Method::GET, "/api/orders", None).await?;
    let orders: Vec<Order> = reply.parse()?;
    page(
        StatusCode::OK,
        &OrdersPage {
            layout,
            orders: orders.iter().map(OrderView::from).collect(),
        },
    )
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage {
    layout: Layout,
    order: OrderView,
    test_tokens: bool,
    token: String,
    errors: FormErrors,
    /// A payment for the order awaits its verdict: the page says so and
    /// refreshes itself instead of offering to pay again.
    processing: bool,
}

/// The order page; `payment`: a payment just made for it (after a 202).
async fn order_page(
    web: &Shared,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    token: String,
    errors: FormErrors,
    payment: Option<&str>,
) -> PageResult {
    let (layout, _) = ctx
        .signed_in_layout(web, "Your order", &format!("/orders/{id}"))
        .await?;
    let order: Order = fetch(web, ctx, &format!("/api/orders/{}", encode(id))).await?;
    // Only a payment id that is a payment id reaches the API.
    let payment = payment
        .filter(|p| uuid::Uuid::parse_str(p).is_ok_and(|u| u.hyphenated().to_string() == *p));
    let processing = match payment {
        Some(p) if order.status == OrderStatus::Created => {
            let reply = ctx
                .call(web, Method::GET, &format!("/api/payments/{p}"), None)
                .await?;
            reply.status == StatusCode::OK
                && reply
                    .parse::<Payment>()
                    .is_ok_and(|p| p.status == PublicStatus::Pending)
        }
        _ => false,
    };
    page(
        status,
        &OrderPage {
            layout,
            order: OrderView::from(&order),
            test_tokens: web.config.test_card_tokens,
            token,
            errors,
            processing,
        },
    )
}

/// `?payment=<id>`: the payment just made, still pending when the page
/// was asked for (after a 202).
pub(crate) async fn show_order(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    order_page(
        &web,
        &ctx,
        &id,
        StatusCode::OK,
        String::new(),
        FormErrors::default(),
        query.get("payment").map(String::as_str),
    )
    .await
}

pub(crate) async fn pay(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let token = value(&form, "token").trim().to_owned();
    let reply = ctx
        .call_once(
            &web,
            &form,
            "/api/payments",
            body_of(&api::PaymentInput {
                order_id: id.clone().into(),
                token: token.clone().into(),
            }),
        )
        .await?;
    match reply.status {
        // No verdict yet: the order page shows "Processing…" until it comes.
        StatusCode::ACCEPTED => {
            let payment = reply
                .parse::<Payment>()
                .map(|p| p.id.to_string())
                .unwrap_or_default();
            return see_other(&format!("/orders/{id}?payment={}", encode(&payment)), &[]);
        }
        s if s.is_success() => return see_other(&format!("/orders/{id}"), &[]),
        StatusCode::UNAUTHORIZED => return Err(PageError::SignIn(format!("/orders/{id}"))),
        StatusCode::NOT_FOUND => return Err(PageError::NotFound),
        _ => {}
    }
    let errors = if reply.status == StatusCode::PAYMENT_REQUIRED {
        FormErrors::top(
            reply
                .errors()
                .first()
                .map(|e| format!("Your card was declined: {}", e.message))
                .unwrap_or_else(|| "Your card was declined.".into()),
        )
    } else {
        FormErrors::from_api(reply.errors(), &["token"])
    };
    order_page(&web, &ctx, &id, reply.status, token, errors, None).await
}

pub(crate) async fn cancel(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call(
            &web,
            Method::DELETE,
            &format!("/api/orders/{}", encode(&id)),
            None,
        )
        .await?;
    match reply.status {
        s if s.is_success() => see_other(&format!("/orders/{id}"), &[]),
        StatusCode::UNAUTHORIZED => Err(PageError::SignIn(format!("/orders/{id}"))),
        StatusCode::NOT_FOUND => Err(PageError::NotFound),
        status => {
            order_page(
                &web,
                &ctx,
                &id,
                status,
                String::new(),
                FormErrors::from_api(reply.errors(), &[]),
                None,
            )
            .await
        }
    }
}
