use crate::GgufError;
use std::fmt;

/// The type tag of a metadata value, numbered as in the GGUF specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 8-bit unsigned integer (0).
    U8,
    /// 8-bit signed integer (1).
    I8,
    /// 16-bit unsigned integer (2).
    U16,
    /// 16-bit signed integer (3).
    I16,
    /// 32-bit unsigned integer (4).
    U32,
    /// 32-bit signed integer (5).
    I32,
    /// 32-bit float (6).
    F32,
    /// Boolean stored as one byte (7).
    Bool,
    /// Length-prefixed UTF-8 string (8).
    String,
    /// Typed array (9).
    Array,
    /// 64-bit unsigned integer (10).
    U64,
    /// 64-bit signed integer (11).
    I64,
    /// 64-bit float (12).
    F64,
}

impl ValueType {
    /// The type for a GGUF type id.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The smallest number of bytes one value of this type occupies in a file.
    pub(crate) fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A string.
    String(String),
    /// An array whose elements all have `ValueType`.
    Array(ValueType, Vec<Value>),
}

impl Value {
    /// This value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
        }
    }

    /// The value as an integer, whatever its integer width; `None` for other types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// The key/value section of a GGUF file, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl Metadata {
    /// Adds an entry; a key already present is an error.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Result<(), GgufError> {
        let key = key.into();
        if self.get(&key).is_some() {
            return Err(GgufError::Duplicate {
                what: "metadata key",
                name: key,
            });
        }
        self.entries.push((key, value));
        Ok(())
    }

    /// All entries in file order.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: found.value_type(),
        }
    }

    /// A non-negative integer of any width that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        value
            .as_i128()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| Self::wrong(key, "a non-negative integer", value))
    }

    /// A non-negative integer that fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let value = self.require(key)?;
        value
            .as_i128()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Self::wrong(key, "an integer in u32 range", value))
    }

    /// A float (`f32`, or `f64` narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.require(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(Self::wrong(key, "a float", other)),
        }
    }

    /// A boolean.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(v) => Ok(*v),
            other => Err(Self::wrong(key, "a bool", other)),
        }
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(v) => Ok(v),
            other => Err(Self::wrong(key, "a string", other)),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let value = self.require(key)?;
        match value {
            Value::Array(ValueType::String, items) => Ok(items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect()),
            other => Err(Self::wrong(key, "an array of strings", other)),
        }
    }

    /// An array of `f32` (SentencePiece scores).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let value = self.require(key)?;
        match value {
            Value::Array(_, items) => items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Some(*x),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Self::wrong(key, "an array of f32", value)),
            other => Err(Self::wrong(key, "an array of f32", other)),
        }
    }

    /// An array of integers of any width, as `i64`.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let value = self.require(key)?;
        match value {
            Value::Array(_, items) => items
                .iter()
                .map(|v| v.as_i128().and_then(|v| i64::try_from(v).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Self::wrong(key, "an array of integers", value)),
            other => Err(Self::wrong(key, "an array of integers", other)),
        }
    }
}

/// Turns a missing metadata key into `None`, keeping every other error (a key of the wrong type
/// is still an error).
pub trait OptionalKey<T> {
    /// `Ok(None)` for [`GgufError::MissingKey`], the value or the error otherwise.
    fn optional(self) -> Result<Option<T>, GgufError>;
}

impl<T> OptionalKey<T> for Result<T, GgufError> {
    fn optional(self) -> Result<Option<T>, GgufError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(GgufError::MissingKey(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
