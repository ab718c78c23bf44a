//! The values that cross the store boundary, in both directions.

use crate::error::{StoreError, StoreErrorKind};

/// A column value: the types our schemas use on every backend
/// (text ids, integer money and times, nullable columns).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// Converts a Rust value into a query parameter.
pub trait ToValue: Sync {
    fn to_value(&self) -> Value;
}

/// Converts a column value into a Rust value.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, StoreError>;
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for &str {
    fn to_value(&self) -> Value {
        Value::Text((*self).to_owned())
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

fn mismatch(expected: &str, got: &Value) -> StoreError {
    StoreError::new(
        StoreErrorKind::Decode,
        format!("expected {expected}, got {got:?}"),
    )
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, StoreError> {
        match value {
            Value::Int(i) => Ok(*i),
            other => Err(mismatch("integer", other)),
        }
    }
}
impl FromValue for u32 {
    fn from_value(value: &Value) -> Result<Self, StoreError> {
        let i = i64::from_value(value)?;
        u32::try_from(i).map_err(|_| mismatch("u32", value))
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, StoreError> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, StoreError> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
