use crate::{
    DEFAULT_ALIGNMENT, GgufError, MAGIC, Metadata, TensorInfo, TensorType, Value, ValueType,
    dequantize,
};
use std::{collections::HashMap, fs::File, path::Path};

/// Arrays nested deeper than this are refused (GGUF files in practice nest at most once).
const MAX_ARRAY_DEPTH: u32 = 4;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// The header of a GGUF file: version, metadata and tensor index.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedGguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Key/value metadata.
    pub metadata: Metadata,
    /// Tensor index in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

/// Parses and validates a whole GGUF file held in memory: every tensor's data must lie inside
/// `bytes`, aligned.
pub fn parse(bytes: &[u8]) -> Result<ParsedGguf, GgufError> {
    let mut cursor = Cursor { bytes, at: 0 };
    let magic = cursor.take(4, "magic")?;
    if magic != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }
    let version = cursor.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = cursor.count("tensor count", 24)?;
    let kv_count = cursor.count("metadata count", 12)?;

    let mut metadata = Metadata::default();
    for _ in 0..kv_count {
        let key = cursor.string()?;
        let ty = cursor.value_type()?;
        let value = cursor.value(ty, 0)?;
        metadata.insert(key, value)?;
    }

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut seen = HashMap::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let info = cursor.tensor_info()?;
        if seen.insert(info.name.clone(), ()).is_some() {
            return Err(GgufError::Duplicate {
                what: "tensor",
                name: info.name,
            });
        }
        tensors.push(info);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => match value.as_i128() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 30 => a as u64,
            Some(a) => return Err(GgufError::BadAlignment(a.max(0) as u64)),
            None => return Err(GgufError::BadAlignment(0)),
        },
    };
    let data_offset = (cursor.at as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let size = t.byte_size();
        let problem = if t.offset % alignment != 0 {
            Some("misaligned")
        } else if data_offset
            .checked_add(t.offset)
            .and_then(|start| start.checked_add(size))
            .is_none_or(|end| end > file_len)
        {
            Some("outside the file")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(GgufError::BadTensorData {
                name: t.name.clone(),
                offset: t.offset,
                size,
                problem,
            });
        }
    }
    Ok(ParsedGguf {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// A GGUF file mapped into memory and indexed.
#[derive(Debug)]
pub struct GgufFile {
    map: memmap2::Mmap,
    parsed: ParsedGguf,
}

impl GgufFile {
    /// Maps and parses the file at `path`. The file must not be modified while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and lives as long as `self`; Ember's contract is that
        // model files are not modified while open (they are written to a new name and renamed).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let parsed = parse(&map)?;
        Ok(GgufFile { map, parsed })
    }

    /// Version, metadata and tensor index.
    pub fn parsed(&self) -> &ParsedGguf {
        &self.parsed
    }

    /// The key/value metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.parsed.metadata
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.parsed.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.parsed
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// The raw bytes of a tensor of this file (checked to be in bounds at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.parsed.data_offset + info.offset) as usize;
        &self.map[start..start + info.byte_size() as usize]
    }

    /// The tensor called `name`, dequantized to `f32` in file order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        dequantize(info, self.tensor_data(info))
    }

    /// Size of the mapped file in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(GgufError::Truncated {
                what,
                offset: self.at as u64,
                needed: (n - left) as u64,
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each taking at least `min_item_size` bytes: refused when the rest of
    /// the file could not hold that many.
    fn count(&mut self, what: &'static str, min_item_size: u64) -> Result<u64, GgufError> {
        let offset = self.at as u64;
        let count = self.u64(what)?;
        if count.saturating_mul(min_item_size) > self.remaining() {
            return Err(GgufError::ImplausibleCount {
                what,
                count,
                offset,
            });
        }
        Ok(count)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.count("string length", 1)?;
        let offset = self.at as u64;
        let raw = self.take(len as usize, "string")?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.at as u64;
        let id = self.u32("value type")?;
        ValueType::from_id(id).ok_or(GgufError::UnknownValueType { id, offset })
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8")?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("i8")?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => Value::U32(self.u32("u32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::U64 => Value::U64(self.u64("u64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::Bool => Value::Bool(self.array::<1>("bool")?[0] != 0),
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ImplausibleCount {
                        what: "array nesting depth",
                        count: depth as u64 + 1,
                        offset: self.at as u64,
                    });
                }
                let elem = self.value_type()?;
                let count = self.count("array length", elem.min_size())?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.string()?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::ImplausibleCount {
                what: "tensor dimensions",
                count: n_dims as u64,
                offset: self.at as u64 - 4,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dimension")?);
        }
        let id = self.u32("tensor type")?;
        let ty = TensorType::from_id(id).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.clone(),
            id,
        })?;
        let offset = self.u64("tensor offset")?;
        let (block, _) = ty.block_layout();
        let count = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0 && n <= 1 << 48);
        if count.is_none() || dims[0] % block != 0 {
            return Err(GgufError::BadShape { name, dims, ty });
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
        })
    }
}
