use std::fmt;

/// A ggml tensor type. Ember reads the layout of all of these; it dequantizes the ones listed
/// in [`crate::dequantize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are ggml's
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4NL,
    IQ4XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl TensorType {
    /// The type for a ggml type id; `None` for ids Ember does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use TensorType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            20 => IQ4NL,
            23 => IQ4XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        use TensorType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            IQ4NL => 20,
            IQ4XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
        }
    }

    /// Values per block and bytes per block.
    pub fn block_layout(self) -> (u64, u64) {
        use TensorType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
            IQ4NL => (32, 18),
            IQ4XS => (256, 136),
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            TensorType::Q2K => "Q2_K",
            TensorType::Q3K => "Q3_K",
            TensorType::Q4K => "Q4_K",
            TensorType::Q5K => "Q5_K",
            TensorType::Q6K => "Q6_K",
            TensorType::Q8K => "Q8_K",
            TensorType::IQ4NL => "IQ4_NL",
            TensorType::IQ4XS => "IQ4_XS",
            other => return fmt::Debug::fmt(other, f),
        };
        f.write_str(name)
    }
}

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, fastest-varying first (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: TensorType,
    /// Offset of its data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Size of its data in bytes.
    pub fn byte_size(&self) -> u64 {
        let (block, bytes) = self.ty.block_layout();
        self.element_count() / block * bytes
    }

    /// Length of one row (`dims[0]`) and the number of rows (product of the other dims).
    pub fn rows(&self) -> (usize, usize) {
        let row = self.dims.first().copied().unwrap_or(1) as usize;
        let count = self.dims.iter().skip(1).product::<u64>() as usize;
        (row, count)
    }
}
