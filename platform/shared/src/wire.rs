//! Request bodies owned by serde, checked in the contract's words.
//!
//! A request type derives `Deserialize` (its field names, renames and
//! schema live on the type, once) with every field a [`Field`]: reading one
//! never fails, so serde reads the whole body, and the type's [`Validate`]
//! then checks each field with a [`Check`], which records every bad field
//! in the shared shape (`{"errors": [{"message", "field"}]}`) before the
//! handler runs. Plain serde would stop at the first bad field, with its
//! own words ("invalid type: integer, expected a string").

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// One field of a request body as the client sent it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    /// Missing, or `null`.
    #[default]
    Absent,
    /// A JSON value that is not a `T` (kept, so a client can pass on what a
    /// person typed and hear from the service what is wrong with it).
    Mistyped(Value),
    Given(T),
}

impl<T> Field<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

impl<T> From<T> for Field<T> {
    fn from(value: T) -> Self {
        Field::Given(value)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through `Option`, a missing field reads as absent too, with no
        // `#[serde(default)]` (which would make the schema call it optional).
        let Some(value) = Option::<Value>::deserialize(deserializer)? else {
            return Ok(Field::Absent);
        };
        Ok(match T::deserialize(&value) {
            Ok(v) => Field::Given(v),
            Err(_) => Field::Mistyped(value),
        })
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Absent => serializer.serialize_none(),
            Field::Mistyped(v) => v.serialize(serializer),
            Field::Given(v) => v.serialize(serializer),
        }
    }
}

/// A request type's checks: [`Validate::validate`] reads each field through
/// the [`Check`], which records what is wrong, and returns the checked
/// value when nothing was.
pub trait Validate: Sized {
    /// What the handler gets: the fields checked, normalised and typed.
    type Valid;

    /// `None` when a field failed; each failure was recorded in `check`.
    fn validate(self, check: &mut Check) -> Option<Self::Valid>;
}

/// Reads a body of `T` and checks it: the checked value, or the 400 listing
/// every bad field.
pub fn validate<T: DeserializeOwned + Validate>(body: Value) -> Result<T::Valid, ApiError> {
    // Only a field that is not a `Field` can fail here; its message names it.
    let input = T::deserialize(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut check = Check::default();
    let valid = input.validate(&mut check);
    match (check.errors.is_empty(), valid) {
        (false, _) => Err(ApiError::Validation(check.errors)),
        (true, Some(valid)) => Ok(valid),
        // A check that declined without saying why: a bug.
        (true, None) => Err(ApiError::internal(format!(
            "{} refused a body without naming a field",
            std::any::type_name::<T>()
        ))),
    }
}

/// Collects per-field errors while a body is checked, so the client hears
/// about every bad field at once. Each reader takes the field's wire name
/// (for the error's `field`) and the label its messages begin with.
#[derive(Debug, Default)]
pub struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// A required value: records "`label` is required" when it is absent
    /// and "`label` must be `kind`" when it is not a `T`.
    pub fn required<T>(
        &mut self,
        value: Field<T>,
        field: &str,
        label: &str,
        kind: &str,
    ) -> Option<T> {
        match value {
            Field::Given(v) => Some(v),
            Field::Absent => {
                self.fail(field, format!("{label} is required"));
                None
            }
            Field::Mistyped(_) => {
                self.fail(field, format!("{label} must be {kind}"));
                None
            }
        }
    }

    /// An optional value: `Some(None)` when absent, `None` (recorded as
    /// "`label` must be `kind`") when it is not a `T`.
    pub fn optional<T>(
        &mut self,
        value: Field<T>,
        field: &str,
        label: &str,
        kind: &str,
    ) -> Option<Option<T>> {
        match value {
            Field::Absent => Some(None),
            other => self.required(other, field, label, kind).map(Some),
        }
    }

    /// A required string.
    pub fn string(&mut self, value: Field<String>, field: &str, label: &str) -> Option<String> {
        self.required(value, field, label, "a string")
    }

    /// A required string that is not empty after trimming, trimmed.
    pub fn non_empty(&mut self, value: Field<String>, field: &str, label: &str) -> Option<String> {
        let s = self.string(value, field, label)?;
        let trimmed = s.trim();
        if trimmed.is_empty() {
            self.fail(field, format!("{label} is required"));
            return None;
        }
        Some(if trimmed.len() == s.len() {
            s
        } else {
            trimmed.to_owned()
        })
    }

    /// A required one-line text (a title) of 1 to `max` characters after
    /// trimming, trimmed; see [`crate::text`] for what it may not contain.
    pub fn line(
        &mut self,
        value: Field<String>,
        field: &str,
        label: &str,
        max: usize,
    ) -> Option<String> {
        self.checked_text(value, field, label, max, false)
    }

    /// A required text that may span lines (a comment) of 1 to `max`
    /// characters after trimming, trimmed.
    pub fn text(
        &mut self,
        value: Field<String>,
        field: &str,
        label: &str,
        max: usize,
    ) -> Option<String> {
        self.checked_text(value, field, label, max, true)
    }

    fn checked_text(
        &mut self,
        value: Field<String>,
        field: &str,
        label: &str,
        max: usize,
        multi_line: bool,
    ) -> Option<String> {
        let s = self.string(value, field, label)?;
        let s = s.trim();
        match crate::text::check(s, multi_line) {
            Err(crate::text::Unfit::Empty) => {
                self.fail(field, format!("{label} is required"));
                return None;
            }
            Err(crate::text::Unfit::Hidden) => {
                self.fail(
                    field,
                    format!("{label} must not contain control, invisible formatting or text-direction characters"),
                );
                return None;
            }
            Ok(()) => {}
        }
        if s.chars().count() > max {
            self.fail(field, format!("{label} must be at most {max} characters"));
            return None;
        }
        Some(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Serialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        #[serde(skip_serializing_if = "Field::is_absent")]
        title: Field<String>,
        #[serde(skip_serializing_if = "Field::is_absent")]
        seat_count: Field<u32>,
    }

    impl Validate for Sample {
        type Valid = (String, u32);
        fn validate(self, check: &mut Check) -> Option<(String, u32)> {
            let title = check.line(self.title, "title", "Title", 5);
            let seats =
                check.required(self.seat_count, "seatCount", "Seat count", "a whole number");
            Some((title?, seats?))
        }
    }

    fn errors(body: Value) -> Vec<(String, String)> {
        match validate::<Sample>(body) {
            Err(ApiError::Validation(errors)) => errors
                .into_iter()
                .map(|e| (e.field.unwrap_or_default(), e.message))
                .collect(),
            Err(e) => panic!("not a validation error: {e}"),
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    #[test]
    fn every_bad_field_is_reported_at_once_in_the_contracts_words() {
        assert_eq!(
            errors(json!({ "title": 7, "seatCount": "two" })),
            [
                ("title".into(), "Title must be a string".into()),
                (
                    "seatCount".into(),
                    "Seat count must be a whole number".into()
                )
            ]
        );
        assert_eq!(
            errors(json!({ "title": null })), // and no seatCount
            [
                ("title".into(), "Title is required".into()),
                ("seatCount".into(), "Seat count is required".into())
            ]
        );
        assert_eq!(
            errors(json!({ "title": " toolong ", "seatCount": 2 })),
            [("title".into(), "Title must be at most 5 characters".into())]
        );
    }

    #[test]
    fn a_good_body_is_checked_and_trimmed_and_unknown_fields_are_ignored() {
        let valid = validate::<Sample>(json!({ "title": " a ", "seatCount": 2, "extra": true }));
        assert_eq!(valid.unwrap(), ("a".to_owned(), 2));
    }

    #[test]
    fn a_field_sends_what_it_holds_and_nothing_when_absent() {
        let sent = Sample {
            title: "a".to_owned().into(),
            seat_count: Field::Mistyped(json!("two")),
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            json!({ "title": "a", "seatCount": "two" })
        );
        assert_eq!(serde_json::to_value(Sample::default()).unwrap(), json!({}));
    }
}
