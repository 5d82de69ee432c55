//! Orders: what a client may send, what it gets back, and the rules in between.

use chrono::{DateTime, Utc};
use contract::{
    events::OrderItem,
    identifier::{CustomerId, Sku},
};
use serde::{Deserialize, Serialize};
use shared::http::FieldError;
use uuid::Uuid;

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i64 = 1000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The body of `POST /orders`, as sent. Every field is optional here so that a missing one is
/// reported by [`PlaceOrderRequest::validate`] with the others, by name, rather than by serde.
#[derive(Debug, Deserialize)]
pub struct PlaceOrderRequest {
    pub customer_id: Option<String>,
    pub items: Option<Vec<ItemRequest>>,
}

#[derive(Debug, Deserialize)]
pub struct ItemRequest {
    pub sku: Option<String>,
    /// Signed and wide, so `-1` and `5000` are answered "must be between 1 and 1000".
    pub quantity: Option<i64>,
}

/// A validated order, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: CustomerId,
    pub items: Vec<OrderItem>,
}

impl PlaceOrderRequest {
    /// Checks every rule and reports every broken one, each with a JSON Pointer to its field.
    pub fn validate(self) -> Result<NewOrder, Vec<FieldError>> {
        let mut errors = Vec::new();
        let customer_id: Option<CustomerId> = check_id(self.customer_id, "#/customer_id", &mut errors);

        let mut items = Vec::new();
        match self.items {
            None => errors.push(FieldError::pointer("#/items", "is required")),
            Some(list) if list.is_empty() => {
                errors.push(FieldError::pointer("#/items", "must contain at least one item"))
            }
            Some(list) if list.len() > MAX_ITEMS => {
                errors.push(FieldError::pointer("#/items", format!("must contain at most {MAX_ITEMS} items")))
            }
            Some(list) => {
                let mut seen: Vec<(Sku, usize)> = Vec::new();
                for (index, item) in list.into_iter().enumerate() {
                    let sku: Option<Sku> = check_id(item.sku, &format!("#/items/{index}/sku"), &mut errors);
                    if let Some(sku) = &sku {
                        if let Some((_, first)) = seen.iter().find(|(s, _)| s == sku) {
                            errors.push(FieldError::pointer(
                                format!("#/items/{index}/sku"),
                                format!("duplicate SKU {sku:?} (also at #/items/{first}/sku); combine the quantities"),
                            ));
                        } else {
                            seen.push((sku.clone(), index));
                        }
                    }
                    let quantity = match item.quantity {
                        None => {
                            errors.push(FieldError::pointer(
                                format!("#/items/{index}/quantity"),
                                "is required",
                            ));
                            None
                        }
                        Some(q) if !(1..=MAX_QUANTITY).contains(&q) => {
                            errors.push(FieldError::pointer(
                                format!("#/items/{index}/quantity"),
                                format!("must be between 1 and {MAX_QUANTITY}"),
                            ));
                            None
                        }
                        Some(q) => u32::try_from(q).ok(),
                    };
                    if let (Some(sku), Some(quantity)) = (sku, quantity) {
                        items.push(OrderItem { sku, quantity });
                    }
                }
            }
        }

        match (customer_id, errors.is_empty()) {
            (Some(customer_id), true) => Ok(NewOrder { customer_id, items }),
            _ => Err(errors),
        }
    }
}

/// An identifier (a customer ID, a SKU) from the field at `pointer`, if it is there and follows
/// [`contract::identifier::check_identifier`]; else the field's error is added to `errors`.
fn check_id<T>(value: Option<String>, pointer: &str, errors: &mut Vec<FieldError>) -> Option<T>
where
    T: TryFrom<String, Error = &'static str>,
{
    match value.map(T::try_from) {
        Some(Ok(id)) => Some(id),
        Some(Err(problem)) => {
            errors.push(FieldError::pointer(pointer, problem));
            None
        }
        None => {
            errors.push(FieldError::pointer(pointer, "is required"));
            None
        }
    }
}

/// Checks an `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
pub fn check_idempotency_key(value: &[u8]) -> Result<String, FieldError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && value.iter().all(|b| (0x21..=0x7e).contains(b));
    if valid {
        Ok(String::from_utf8_lossy(value).into_owned())
    } else {
        Err(FieldError::header(
            "Idempotency-Key",
            format!(
                "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters (a UUID is a good choice)"
            ),
        ))
    }
}

/// The lifecycle of an order, as order-api knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted and on its way to a worker.
    Pending,
    /// Stock is set aside for every item.
    Reserved,
    /// Cannot be filled (unknown SKU, not enough stock).
    Rejected,
    /// Processing failed on every delivery attempt; it waits in the dead-letter table.
    DeadLettered,
}

/// An order as the API shows it (`POST /orders`, `GET /orders/{id}`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrderView {
    #[sqlx(rename = "id")]
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub customer_id: String,
    #[sqlx(json)]
    pub items: Vec<OrderItem>,
    /// Why the order was not reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The trace of the request that placed the order: its whole journey, in Jaeger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderView {
    /// Whether this stored order is what `order` asks for (the same key must mean the same
    /// order; item order does not matter).
    pub fn matches(&self, order: &NewOrder) -> bool {
        let sorted = |items: &[OrderItem]| {
            let mut items = items.to_vec();
            items.sort_by(|a, b| a.sku.cmp(&b.sku));
            items
        };
        order.customer_id == self.customer_id.as_str() && sorted(&self.items) == sorted(&order.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validate(body: serde_json::Value) -> Result<NewOrder, Vec<FieldError>> {
        serde_json::from_value::<PlaceOrderRequest>(body).unwrap().validate()
    }

    fn pointers(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().filter_map(|e| e.pointer.as_deref()).collect()
    }

    #[test]
    fn a_good_order_is_accepted() {
        let order =
            validate(json!({"customer_id": "c-42", "items": [{"sku": "WIDGET-1", "quantity": 2}]})).unwrap();
        assert_eq!(order.items, vec![OrderItem::new("WIDGET-1", 2)]);
    }

    #[test]
    fn missing_fields_are_each_named() {
        let errors = validate(json!({})).unwrap_err();
        assert_eq!(pointers(&errors), ["#/customer_id", "#/items"]);
        let errors = validate(json!({"customer_id": "c", "items": [{}]})).unwrap_err();
        assert_eq!(pointers(&errors), ["#/items/0/sku", "#/items/0/quantity"]);
    }

    #[test]
    fn quantities_must_be_between_1_and_1000() {
        for bad in [0, -1, 1001] {
            let errors =
                validate(json!({"customer_id": "c", "items": [{"sku": "A", "quantity": bad}]})).unwrap_err();
            assert_eq!(pointers(&errors), ["#/items/0/quantity"], "{bad}");
        }
        assert!(validate(json!({"customer_id": "c", "items": [{"sku": "A", "quantity": 1000}]})).is_ok());
    }

    #[test]
    fn item_counts_must_be_between_1_and_100() {
        assert_eq!(pointers(&validate(json!({"customer_id": "c", "items": []})).unwrap_err()), ["#/items"]);
        let many: Vec<_> = (0..101).map(|i| json!({"sku": format!("S{i}"), "quantity": 1})).collect();
        assert_eq!(pointers(&validate(json!({"customer_id": "c", "items": many})).unwrap_err()), ["#/items"]);
        let hundred: Vec<_> = (0..100).map(|i| json!({"sku": format!("S{i}"), "quantity": 1})).collect();
        assert!(validate(json!({"customer_id": "c", "items": hundred})).is_ok());
    }

    #[test]
    fn a_duplicate_sku_points_at_the_second_occurrence() {
        let errors = validate(json!({"customer_id": "c", "items": [
            {"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2}]}))
        .unwrap_err();
        assert_eq!(pointers(&errors), ["#/items/2/sku"]);
        assert!(errors[0].detail.contains("#/items/0/sku"));
    }

    #[test]
    fn ids_must_be_short_and_plain() {
        for bad in ["", "has space", "ünïcode", &"x".repeat(65)] {
            let errors =
                validate(json!({"customer_id": bad, "items": [{"sku": "A", "quantity": 1}]})).unwrap_err();
            assert_eq!(pointers(&errors), ["#/customer_id"], "{bad:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(check_idempotency_key(b"5f1c0a9e-1d2b-4e8f-9b3a-7c6d5e4f3a2b").is_ok());
        for bad in [&b""[..], b"has space", b"tab\t", &[b'k'; 256]] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_same_items_in_another_order_match() {
        let view = OrderView {
            order_id: Uuid::nil(),
            status: OrderStatus::Pending,
            customer_id: "c".into(),
            items: vec![OrderItem::new("A", 1), OrderItem::new("B", 2)],
            reason: None,
            trace_id: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let same = NewOrder {
            customer_id: CustomerId::parse("c").unwrap(),
            items: view.items.iter().rev().cloned().collect(),
        };
        assert!(view.matches(&same));
        let other =
            NewOrder { customer_id: CustomerId::parse("c").unwrap(), items: vec![OrderItem::new("A", 1)] };
        assert!(!view.matches(&other));
    }
}
