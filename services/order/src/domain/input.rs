//! The order as the API receives it, and the checks that make it a valid new order.
//!
//! [`PlaceOrder`] is the wire shape (unknown fields refused); [`PlaceOrder::validate`] turns it
//! into a [`NewOrder`] or a problem listing every invalid field, so nothing invalid gets past
//! the edge.

use serde::{Deserialize, Serialize};

use flotilla_kit::Problem;

/// Most lines in one order.
pub const MAX_ITEMS: usize = 100;
/// Most units of one SKU in one order.
pub const MAX_QUANTITY: i64 = 1_000;

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// The ordering customer. A customer's token may leave it out (it is then theirs); an
    /// admin's must name it.
    #[serde(default)]
    pub customer_id: String,
    /// What to order.
    pub items: Vec<ItemRequest>,
    /// Where to ship.
    pub ship_to: Address,
}

/// One line of an order as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    /// Product SKU.
    pub sku: String,
    /// Units, 1 to [`MAX_QUANTITY`].
    pub quantity: i64,
}

/// A shipping address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: String,
}

/// A validated order, ready to be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The ordering customer.
    pub customer_id: String,
    /// Lines, SKUs distinct.
    pub items: Vec<ItemRequest>,
    /// Where to ship.
    pub ship_to: Address,
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field, e.g. `items[2].quantity`.
    pub field: String,
    /// What is wrong.
    pub detail: String,
}

impl PlaceOrder {
    /// Checks every field; on failure returns a 422 problem listing all invalid fields.
    pub fn validate(self) -> Result<NewOrder, Problem> {
        let mut errors = Vec::new();
        let mut error = |field: String, detail: &str| {
            errors.push(FieldError {
                field,
                detail: detail.to_owned(),
            })
        };
        if !is_identifier(&self.customer_id) {
            error(
                "customer_id".into(),
                "must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
            );
        }
        if self.items.is_empty() {
            error("items".into(), "must contain at least one item");
        }
        if self.items.len() > MAX_ITEMS {
            error("items".into(), "must contain at most 100 items");
        }
        let mut seen = std::collections::HashSet::new();
        for (n, item) in self.items.iter().enumerate() {
            if !is_sku(&item.sku) {
                error(
                    format!("items[{n}].sku"),
                    "must be 1 to 32 characters of A-Z, 0-9 or '-'",
                );
            } else if !seen.insert(item.sku.as_str()) {
                error(
                    format!("items[{n}].sku"),
                    "appears twice: give each SKU once, with its total quantity",
                );
            }
            if item.quantity <= 0 {
                error(format!("items[{n}].quantity"), "must be at least 1");
            } else if item.quantity > MAX_QUANTITY {
                error(format!("items[{n}].quantity"), "must be at most 1000");
            }
        }
        let address = &self.ship_to;
        for (field, value) in [
            ("ship_to.name", &address.name),
            ("ship_to.street", &address.street),
            ("ship_to.city", &address.city),
            ("ship_to.postal_code", &address.postal_code),
        ] {
            if value.trim().is_empty()
                || value.chars().count() > 200
                || value.chars().any(char::is_control)
            {
                error(field.into(), "must be 1 to 200 printable characters");
            }
        }
        if !(address.country.len() == 2 && address.country.bytes().all(|b| b.is_ascii_uppercase()))
        {
            error(
                "ship_to.country".into(),
                "must be an ISO 3166-1 alpha-2 code in upper case, like `FR`",
            );
        }
        if !errors.is_empty() {
            let detail = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.detail))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Problem::unprocessable("invalid-order", detail)
                .with("errors", serde_json::to_value(&errors).unwrap_or_default()));
        }
        Ok(NewOrder {
            customer_id: self.customer_id,
            items: self.items,
            ship_to: self.ship_to,
        })
    }
}

fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `s` is a well-formed SKU (`KB-001`).
pub fn is_sku(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> PlaceOrder {
        PlaceOrder {
            customer_id: "alice".into(),
            items: vec![ItemRequest {
                sku: "KB-001".into(),
                quantity: 2,
            }],
            ship_to: Address {
                name: "Alice Martin".into(),
                street: "1 rue de la Paix".into(),
                city: "Paris".into(),
                postal_code: "75002".into(),
                country: "FR".into(),
            },
        }
    }

    #[test]
    fn a_good_order_passes() {
        assert!(order().validate().is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = order();
        bad.customer_id = "".into();
        bad.items.push(ItemRequest {
            sku: "KB-001".into(),
            quantity: 0,
        });
        bad.items.push(ItemRequest {
            sku: "bad sku".into(),
            quantity: 1_000_001,
        });
        bad.ship_to.country = "fr".into();
        bad.ship_to.city = " ".into();
        let problem = bad.validate().expect_err("invalid");
        assert_eq!(problem.status, 422);
        let fields: Vec<String> = problem.extensions["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
            .collect();
        for field in [
            "customer_id",
            "items[1].sku",
            "items[1].quantity",
            "items[2].sku",
            "items[2].quantity",
            "ship_to.city",
            "ship_to.country",
        ] {
            assert!(
                fields.iter().any(|f| f == field),
                "{field} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn empty_and_oversized_item_lists_are_refused() {
        let mut empty = order();
        empty.items.clear();
        assert!(empty.validate().is_err());
        let mut huge = order();
        huge.items = (0..101)
            .map(|n| ItemRequest {
                sku: format!("S-{n}"),
                quantity: 1,
            })
            .collect();
        assert!(huge.validate().is_err());
    }
}
