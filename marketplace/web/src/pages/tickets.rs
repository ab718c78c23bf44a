//! The listing of tickets for sale, a ticket's page, selling and editing
//! one, and the seller's own tickets.

use super::*;

// ------------------------------------------------------------------ landing

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    layout: Layout,
    tickets: Vec<TicketView>,
    next: Option<String>,
}

#[derive(serde::Deserialize)]
pub(crate) struct After {
    after: Option<String>,
}

pub(crate) async fn index(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<After>,
) -> PageResult {
    let path = page_of("/api/tickets", q.after.as_deref());
    let reply = ctx.call(&web, Method::GET, &path, None).await?;
    if reply.status == StatusCode::BAD_REQUEST {
        return Err(PageError::NotFound);
    }
    let tickets: Vec<Ticket> = reply.parse()?;
    let next = next_after(&tickets, |t| t.id.to_string());
    page(
        StatusCode::OK,
        &IndexPage {
            layout: ctx.layout(&web, "Tickets for sale").await?,
            tickets: tickets.iter().map(TicketView::from).collect(),
            next,
        },
    )
}

// ------------------------------------------------------------------ tickets

#[derive(Template)]
#[template(path = "ticket_form.html")]
struct TicketFormPage {
    layout: Layout,
    heading: String,
    action: String,
    submit: &'static str,
    title: String,
    price: String,
    errors: FormErrors,
}

/// A ticket as typed: the price goes to the API as a JSON number when it
/// reads as one, else as typed, so the API's own message explains it.
fn ticket_input(title: &str, typed_price: &str) -> Value {
    let typed = typed_price.trim();
    body_of(&api::TicketInput {
        title: title.to_owned().into(),
        price: match typed.parse::<f64>() {
            Ok(p) if p.is_finite() => p.into(),
            _ => Field::Mistyped(typed.into()),
        },
    })
}

pub(crate) async fn new_ticket_form(State(web): State<Shared>, ctx: Ctx) -> PageResult {
    let (layout, _) = ctx
        .signed_in_layout(&web, "Sell a ticket", "/tickets/new")
        .await?;
    page(
        StatusCode::OK,
        &TicketFormPage {
            layout,
            heading: "Sell a ticket".into(),
            action: "/tickets/new".into(),
            submit: "List ticket",
            title: String::new(),
            price: String::new(),
            errors: FormErrors::default(),
        },
    )
}

pub(crate) async fn new_ticket(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let (title, price) = (value(&form, "title"), value(&form, "price"));
    let reply = ctx
        .call(
            &web,
            Method::POST,
            "/api/tickets",
            Some(ticket_input(title, price)),
        )
        .await?;
    if reply.status == StatusCode::UNAUTHORIZED {
        return Err(PageError::SignIn("/tickets/new".into()));
    }
    if reply.ok() {
        let t: Ticket = reply.parse()?;
        return see_other(&format!("/tickets/{}", t.id), &[]);
    }
    page(
        reply.status,
        &TicketFormPage {
            layout: ctx.layout(&web, "Sell a ticket").await?,
            heading: "Sell a ticket".into(),
            action: "/tickets/new".into(),
            submit: "List ticket",
            title: title.to_owned(),
            price: price.to_owned(),
            errors: FormErrors::from_api(reply.errors(), &["title", "price"]),
        },
    )
}

#[derive(Template)]
#[template(path = "ticket.html")]
struct TicketPage {
    layout: Layout,
    ticket: TicketView,
    is_seller: bool,
    errors: FormErrors,
}

async fn fetch_ticket(web: &Shared, ctx: &Ctx, id: &str) -> Result<Ticket, PageError> {
    fetch(web, ctx, &format!("/api/tickets/{}", encode(id))).await
}

async fn ticket_page(
    web: &Shared,
    ctx: &Ctx,
    ticket: &Ticket,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    let layout = ctx.layout(web, ticket.title.clone()).await?;
    let is_seller = layout.user.as_ref().is_some_and(|u| u.id == ticket.user_id);
    page(
        status,
        &TicketPage {
            layout,
            ticket: TicketView::from(ticket),
            is_seller,
            errors,
        },
    )
}

pub(crate) async fn show_ticket(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
) -> PageResult {
    let ticket = fetch_ticket(&web, &ctx, &id).await?;
    ticket_page(&web, &ctx, &ticket, StatusCode::OK, FormErrors::default()).await
}

pub(crate) async fn purchase(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call_once(
            &web,
            &form,
            "/api/orders",
            body_of(&api::OrderInput {
                ticket_id: id.clone().into(),
            }),
        )
        .await?;
    if reply.status == StatusCode::UNAUTHORIZED {
        return Err(PageError::SignIn(format!("/tickets/{id}")));
    }
    if reply.ok() {
        let order: Order = reply.parse()?;
        return see_other(&format!("/orders/{}", order.id), &[]);
    }
    let ticket = fetch_ticket(&web, &ctx, &id).await?;
    ticket_page(
        &web,
        &ctx,
        &ticket,
        reply.status,
        FormErrors::from_api(reply.errors(), &[]),
    )
    .await
}

async fn seller_ticket(web: &Shared, ctx: &Ctx, id: &str) -> Result<(Layout, Ticket), PageError> {
    let ticket = fetch_ticket(web, ctx, id).await?;
    let (layout, user) = ctx
        .signed_in_layout(
            web,
            format!("Edit {}", ticket.title),
            &format!("/tickets/{id}/edit"),
        )
        .await?;
    if user.id != ticket.user_id {
        return Err(PageError::Forbidden(
            "Only the seller can edit this ticket.",
        ));
    }
    Ok((layout, ticket))
}

pub(crate) async fn edit_ticket_form(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
) -> PageResult {
    let (layout, ticket) = seller_ticket(&web, &ctx, &id).await?;
    page(
        StatusCode::OK,
        &TicketFormPage {
            layout,
            heading: format!("Edit {}", ticket.title),
            action: format!("/tickets/{}/edit", ticket.id),
            submit: "Save changes",
            title: ticket.title.clone(),
            price: price_input(ticket.price),
            errors: FormErrors::default(),
        },
    )
}

pub(crate) async fn edit_ticket(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let (title, price) = (value(&form, "title"), value(&form, "price"));
    let reply = ctx
        .call(
            &web,
            Method::PUT,
            &format!("/api/tickets/{}", encode(&id)),
            Some(ticket_input(title, price)),
        )
        .await?;
    match reply.status {
        s if s.is_success() => return see_other(&format!("/tickets/{id}"), &[]),
        StatusCode::UNAUTHORIZED => return Err(PageError::SignIn(format!("/tickets/{id}/edit"))),
        StatusCode::NOT_FOUND => return Err(PageError::NotFound),
        _ => {}
    }
    let ticket = fetch_ticket(&web, &ctx, &id).await?;
    page(
        reply.status,
        &TicketFormPage {
            layout: ctx.layout(&web, format!("Edit {}", ticket.title)).await?,
            heading: format!("Edit {}", ticket.title),
            action: format!("/tickets/{id}/edit"),
            submit: "Save changes",
            title: title.to_owned(),
            price: price.to_owned(),
            errors: FormErrors::from_api(reply.errors(), &["title", "price"]),
        },
    )
}

#[derive(Template)]
#[template(path = "my_tickets.html")]
struct MyTicketsPage {
    layout: Layout,
    tickets: Vec<TicketView>,
    next: Option<String>,
}

pub(crate) async fn my_tickets(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<After>,
) -> PageResult {
    let (layout, _) = ctx
        .signed_in_layout(&web, "My tickets", "/tickets/mine")
        .await?;
    let path = page_of("/api/tickets/mine", q.after.as_deref());
    let reply = ctx.call(&web, Method::GET, &path, None).await?;
    if reply.status == StatusCode::BAD_REQUEST {
        return Err(PageError::NotFound);
    }
    let tickets: Vec<Ticket> = reply.parse()?;
    let next = next_after(&tickets, |t| t.id.to_string());
    page(
        StatusCode::OK,
        &MyTicketsPage {
            layout,
            tickets: tickets.iter().map(TicketView::from).collect(),
            next,
        },
    )
}
