//! Rows ↔ types: [`Column`] reads one SQLite value as a Rust type and [`FromRow`] reads a whole
//! row, so an adapter writes `let rows: Vec<(String, i64)> = db.all(..)?` instead of indexing
//! columns by hand.
//!
//! A value of the wrong type is a corruption error naming the column, never a silent default:
//! a row this code did not write (or wrote under another layout) must not quietly become a zero
//! or an empty string that then drives a decision. `NULL` reads only into an `Option`.

use gateway_core::GatewayError;
use serde::de::DeserializeOwned;
use worker::SqlStorageValue;

/// A value that can be read from one SQLite column.
pub trait Column: Sized {
    /// Reads the value, or says what was found instead.
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str>;
}

fn found(v: &SqlStorageValue) -> &'static str {
    match v {
        SqlStorageValue::Null => "NULL",
        SqlStorageValue::Boolean(_) => "a boolean",
        SqlStorageValue::Integer(_) => "an integer",
        SqlStorageValue::Float(_) => "a real",
        SqlStorageValue::String(_) => "text",
        SqlStorageValue::Blob(_) => "a blob",
    }
}

impl Column for i64 {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        super::int(v).ok_or_else(|| found(v))
    }
}

impl Column for u64 {
    /// Counters: a negative stored value is corruption too.
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| u64::try_from(i).map_err(|_| "a negative integer"))
    }
}

impl Column for u32 {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| u32::try_from(i).map_err(|_| "an out-of-range integer"))
    }
}

impl Column for f64 {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        super::real(v).ok_or_else(|| found(v))
    }
}

impl Column for bool {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl Column for String {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        super::text(v).ok_or_else(|| found(v))
    }
}

impl Column for Vec<u8> {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        super::blob(v).map(<[u8]>::to_vec).ok_or_else(|| found(v))
    }
}

impl<T: Column> Column for Option<T> {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        match v {
            SqlStorageValue::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A postcard blob written by this code, decoded on read.
pub struct Blob<T>(pub T);

impl<T: DeserializeOwned> Column for Blob<T> {
    fn from_value(v: &SqlStorageValue) -> Result<Self, &'static str> {
        let bytes = super::blob(v).ok_or_else(|| found(v))?;
        postcard::from_bytes(bytes)
            .map(Blob)
            .map_err(|_| "a blob that does not decode")
    }
}

/// Column `i` of `row` as `T`, or a corruption error naming the column.
pub fn get<T: Column>(row: &[SqlStorageValue], i: usize) -> Result<T, GatewayError> {
    let v = super::col(row, i)?;
    T::from_value(v).map_err(|what| {
        GatewayError::Internal(format!(
            "corrupt row: column {i} holds {what}, expected {}",
            std::any::type_name::<T>()
        ))
    })
}

/// A type read from a whole row.
pub trait FromRow: Sized {
    /// Reads the row; a missing or mistyped column is an error.
    fn from_row(row: &[SqlStorageValue]) -> Result<Self, GatewayError>;
}

macro_rules! tuple_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Column),+> FromRow for ($($t,)+) {
            fn from_row(row: &[SqlStorageValue]) -> Result<Self, GatewayError> {
                Ok(($(get::<$t>(row, $i)?,)+))
            }
        }
    };
}

tuple_row!(A 0);
tuple_row!(A 0, B 1);
tuple_row!(A 0, B 1, C 2);
tuple_row!(A 0, B 1, C 2, D 3);
tuple_row!(A 0, B 1, C 2, D 3, E 4);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
