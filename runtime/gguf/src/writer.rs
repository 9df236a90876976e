use crate::{DEFAULT_ALIGNMENT, GgufError, MAGIC, Metadata, TensorInfo, TensorType, Value};

/// Builds a GGUF version 3 file in memory.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry (keys must be unique).
    pub fn add_metadata(&mut self, key: &str, value: Value) -> Result<&mut Self, GgufError> {
        self.metadata.insert(key, value)?;
        Ok(self)
    }

    /// Adds a tensor of `ty` with `dims` (fastest first) and its encoded `data`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: TensorType,
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(GgufError::Duplicate {
                what: "tensor",
                name: name.into(),
            });
        }
        let info = TensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            offset: 0,
        };
        let (block, _) = ty.block_layout();
        if dims.is_empty()
            || dims.len() > 4
            || !dims[0].is_multiple_of(block)
            || info.element_count() == 0
            || info.byte_size() != data.len() as u64
        {
            return Err(GgufError::BadShape {
                name: name.into(),
                dims: dims.to_vec(),
                ty,
            });
        }
        self.tensors.push((info, data));
        Ok(self)
    }

    /// The encoded file. Tensor data is aligned to `general.alignment` when the metadata sets
    /// it (a power of two up to 2³⁰, as the reader requires), else to [`DEFAULT_ALIGNMENT`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self
            .metadata
            .get("general.alignment")
            .and_then(Value::as_i128)
            .filter(|&a| a > 0 && a <= 1 << 30 && (a as u64).is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT.into()) as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.entries().len() as u64).to_le_bytes());
        for (key, value) in self.metadata.entries() {
            write_string(&mut out, key);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (info, data) in &self.tensors {
            write_string(&mut out, &info.name);
            out.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
            for d in &info.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&info.ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += data.len().div_ceil(align) * align;
        }
        for (_, data) in &self.tensors {
            out.resize(out.len().div_ceil(align) * align, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&elem.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}
