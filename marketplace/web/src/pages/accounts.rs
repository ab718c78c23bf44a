//! Sign up, sign in, sign out (here or everywhere), and the account page
//! (the password change).

use super::*;

// ------------------------------------------------------------- sign up / in

#[derive(Template)]
#[template(path = "auth.html")]
struct AuthPage {
    layout: Layout,
    signup: bool,
    action: String,
    email: String,
    errors: FormErrors,
}

#[derive(serde::Deserialize)]
pub(crate) struct Next {
    next: Option<String>,
}

async fn auth_form(web: Shared, ctx: Ctx, signup: bool, next: Option<String>) -> PageResult {
    let title = if signup { "Sign up" } else { "Sign in" };
    let path = if signup {
        "/auth/signup"
    } else {
        "/auth/signin"
    };
    let action = match &next {
        Some(n) => format!("{path}?next={}", encode(&safe_next(Some(n)))),
        None => path.to_owned(),
    };
    page(
        StatusCode::OK,
        &AuthPage {
            layout: ctx.layout(&web, title).await?,
            signup,
            action,
            email: String::new(),
            errors: FormErrors::default(),
        },
    )
}

async fn auth_submit(
    web: Shared,
    ctx: Ctx,
    signup: bool,
    next: Option<String>,
    form: HashMap<String, String>,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let email = value(&form, "email").to_owned();
    let api_path = if signup {
        "/api/users/signup"
    } else {
        "/api/users/signin"
    };
    let reply = ctx
        .call(
            &web,
            Method::POST,
            api_path,
            Some(if signup {
                body_of(&api::SignUp {
                    email: email.clone().into(),
                    password: value(&form, "password").to_owned().into(),
                })
            } else {
                body_of(&api::SignIn {
                    email: email.clone().into(),
                    password: value(&form, "password").to_owned().into(),
                })
            }),
        )
        .await?;
    if reply.ok() {
        return see_other(&safe_next(next.as_ref()), &reply.cookies);
    }
    let title = if signup { "Sign up" } else { "Sign in" };
    let path = if signup {
        "/auth/signup"
    } else {
        "/auth/signin"
    };
    page(
        reply.status,
        &AuthPage {
            layout: ctx.layout(&web, title).await?,
            signup,
            action: match &next {
                Some(n) => format!("{path}?next={}", encode(&safe_next(Some(n)))),
                None => path.to_owned(),
            },
            email,
            errors: FormErrors::from_api(reply.errors(), &["email", "password"]),
        },
    )
}

pub(crate) async fn signup_form(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
) -> PageResult {
    auth_form(web, ctx, true, q.next).await
}

pub(crate) async fn signin_form(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
) -> PageResult {
    auth_form(web, ctx, false, q.next).await
}

pub(crate) async fn signup(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
    PageForm(form): PageForm,
) -> PageResult {
    auth_submit(web, ctx, true, q.next, form).await
}

pub(crate) async fn signin(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
    PageForm(form): PageForm,
) -> PageResult {
    auth_submit(web, ctx, false, q.next, form).await
}

/// Posts the sign-out form to `api_path` and goes home with the cleared cookie.
async fn sign_out_via(
    web: Shared,
    ctx: Ctx,
    form: HashMap<String, String>,
    api_path: &str,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx.call(&web, Method::POST, api_path, None).await?;
    see_other("/", &reply.cookies)
}

pub(crate) async fn signout(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    sign_out_via(web, ctx, form, "/api/users/signout").await
}

/// Ends every session of the signed-in user, this one included.
pub(crate) async fn signout_everywhere(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    sign_out_via(web, ctx, form, "/api/users/signout-all").await
}

// ------------------------------------------------------------------ account

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    /// The password was just changed.
    changed: bool,
    errors: FormErrors,
}

#[derive(serde::Deserialize)]
pub(crate) struct AccountQuery {
    changed: Option<String>,
}

/// The signed-in user's account: the password change form.
pub(crate) async fn account(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<AccountQuery>,
) -> PageResult {
    let (layout, _) = ctx.signed_in_layout(&web, "Account", "/account").await?;
    page(
        StatusCode::OK,
        &AccountPage {
            layout,
            changed: q.changed.is_some(),
            errors: FormErrors::default(),
        },
    )
}

/// Changes the password: every session of the user ends, and the browser
/// gets the new one the API answered with.
pub(crate) async fn change_password(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call(
            &web,
            Method::POST,
            "/api/users/password",
            Some(body_of(&api::PasswordChange {
                current_password: value(&form, "currentPassword").to_owned().into(),
                new_password: value(&form, "newPassword").to_owned().into(),
            })),
        )
        .await?;
    if reply.ok() {
        return see_other("/account?changed=1", &reply.cookies);
    }
    if reply.status == StatusCode::UNAUTHORIZED {
        return Err(PageError::SignIn("/account".into()));
    }
    let (layout, _) = ctx.signed_in_layout(&web, "Account", "/account").await?;
    let mut errors = FormErrors::from_api(reply.errors(), &["currentPassword", "newPassword"]);
    if reply.status == StatusCode::FORBIDDEN {
        // "Current password is incorrect": next to the field it is about.
        errors.fields.extend(
            errors
                .top
                .drain(..)
                .map(|m| ("currentPassword".to_owned(), m)),
        );
    }
    page(
        reply.status,
        &AccountPage {
            layout,
            changed: false,
            errors,
        },
    )
}
