//! Who may see and act on an order: its customer, an admin, or a platform service
//! ([`Principal::confined_to`]).
//!
//! A customer asking for another's order gets the same 404 as for an order that does not
//! exist, so that order ids cannot be probed.

use axum::http::StatusCode;
use flotilla_identity::Principal;
use flotilla_kit::Problem;

use super::context::Context;
use crate::domain::Order;

/// `Ok` if `caller` may see order `id`; the 404 of an unknown order if not (the order is
/// loaded only for a caller confined to their own orders).
pub(super) async fn visible(
    context: &Context,
    caller: &Principal,
    id: &str,
) -> Result<(), Problem> {
    let Some(me) = caller.confined_to() else {
        return Ok(());
    };
    let order = context
        .sagas
        .db
        .events
        .load::<Order>(id)
        .await
        .map_err(|e| Problem::internal(&e))?;
    if order.state.status.is_some() && order.state.customer_id == me {
        Ok(())
    } else {
        Err(Problem::not_found(format!("no order `{id}`")))
    }
}

/// `Ok` unless `caller` is confined to their own data: the read models' reports across
/// customers are for admins and platform services.
pub(super) fn staff_only(caller: &Principal, what: &str) -> Result<(), Problem> {
    match caller.confined_to() {
        None => Ok(()),
        Some(_) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} is for admins: a customer's token reads their own orders only"),
        )
        .with("error", "insufficient_scope")),
    }
}

/// The customer of a new order: the caller's own when confined (a body naming another one is
/// refused with 403; a body naming none takes the caller's), else the one the body names.
pub(super) fn customer_of(caller: &Principal, named: &str) -> Result<String, Problem> {
    match caller.confined_to() {
        None => Ok(named.to_owned()),
        Some(me) if named.is_empty() || named == me => Ok(me.to_owned()),
        Some(me) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "not-your-customer-id",
            format!("a customer orders for themselves: the token is `{me}`'s, the body names another customer"),
        )
        .with("customer_id", named.to_owned())),
    }
}
