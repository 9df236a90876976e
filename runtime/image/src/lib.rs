//! Ember images on a file system: [`Image`] maps one and checks its structure (and, on request,
//! every hash); [`ImageWriter`] lays one out and writes it atomically.
//!
//! The format is defined in [`ember_core::image`].

#![warn(missing_docs)]

use ember_core::blocks::{BLOCK, int4, int8, scale_index};
use ember_core::image::{
    HEADER_LEN, IMAGE_VERSION, ImageError, ImageHeader, Manifest, SECTION_ALIGN, SectionEntry,
    SelfTest, TensorEncoding, TensorEntry, TokenizerData, align_up,
};
use sha2::{Digest, Sha256};
use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// The file is not a valid image (the reason is the error's source).
    #[error("{path} is not a valid Ember image")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        source: ImageError,
    },
    /// A tensor or section the caller needs is absent or malformed.
    #[error("{path}: {message}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The file system refused (the system's error is the source).
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Checks an image held in memory: header, length, manifest hash, the header's image version
/// against the manifest's, section bounds and alignment, tensor bounds. With `verify_sections` also every section's SHA-256.
pub fn parse(bytes: &[u8], verify_sections: bool) -> Result<Manifest, ImageError> {
    let header = ImageHeader::parse(bytes)?;
    let found = bytes.len() as u64;
    if found < header.file_len {
        return Err(ImageError::Truncated {
            needed: header.file_len,
            found,
        });
    }
    if found > header.file_len {
        return Err(ImageError::TrailingBytes {
            expected: header.file_len,
            found,
        });
    }
    let manifest_bytes = &bytes[header.manifest_range()];
    if sha256(manifest_bytes) != header.manifest_sha256 {
        return Err(ImageError::ManifestHashMismatch);
    }
    let manifest = Manifest::from_bytes(manifest_bytes)?;
    if manifest.image_version != header.image_version {
        return Err(ImageError::CorruptHeader);
    }
    let data_start = HEADER_LEN as u64 + header.manifest_len as u64;
    for section in &manifest.sections {
        let end = section.offset.checked_add(section.length);
        if section.offset < data_start
            || section.offset % SECTION_ALIGN != 0
            || end.is_none_or(|end| end > found)
        {
            return Err(ImageError::BadSection);
        }
        if verify_sections {
            let range = section.offset as usize..(section.offset + section.length) as usize;
            if sha256(&bytes[range]) != section.sha256 {
                return Err(ImageError::SectionHashMismatch);
            }
        }
    }
    for tensor in &manifest.tensors {
        // Bound the element count before any layout arithmetic (a crafted manifest can carry
        // a matching hash and absurd dimensions).
        let count = tensor
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        if tensor.dims.is_empty() || tensor.dims.len() > 4 || count.is_none_or(|n| n > 1 << 40) {
            return Err(ImageError::BadSection);
        }
        let (cols, rows) = tensor.rows();
        let layout = TensorEntry::layout(tensor.encoding, cols, rows);
        let fits = manifest
            .sections
            .get(tensor.section as usize)
            .is_some_and(|s| {
                tensor.offset % SECTION_ALIGN == 0
                    && tensor.length >= layout.total()
                    && tensor
                        .offset
                        .checked_add(tensor.length)
                        .is_some_and(|end| end <= s.length)
            });
        let blocks_ok = tensor.encoding == TensorEncoding::F32 || cols % BLOCK as u64 == 0;
        if !fits || !blocks_ok {
            return Err(ImageError::BadSection);
        }
    }
    Ok(manifest)
}

/// An Ember image mapped into memory.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    manifest: Manifest,
}

impl Image {
    /// Maps the image at `path` and checks its structure and manifest hash (not the section
    /// hashes: see [`Image::verify`]). The file must not change while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImageFileError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| ImageFileError::Io {
            action: "cannot open",
            path: path.clone(),
            source,
        })?;
        // SAFETY: read-only mapping kept alive by `self`; images are written to a new name and
        // renamed into place, never modified while in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ImageFileError::Io {
            action: "cannot map",
            path: path.clone(),
            source,
        })?;
        // Ask for the weights to be mapped in 2 MiB pages where the page cache holds them so:
        // the kernels stream them, and 4 KiB pages cost a TLB miss and a stalled prefetcher
        // every 4 KiB. Only advice: a kernel that cannot is no error.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let manifest = parse(&map, false).map_err(|source| ImageFileError::Invalid {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Image {
            path,
            map: Arc::new(map),
            manifest,
        })
    }

    /// Checks the SHA-256 of every section.
    pub fn verify(&self) -> Result<(), ImageFileError> {
        parse(&self.map, true)
            .map(|_| ())
            .map_err(|source| self.invalid(source))
    }

    fn invalid(&self, source: ImageError) -> ImageFileError {
        ImageFileError::Invalid {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn content(&self, message: String) -> ImageFileError {
        ImageFileError::Content {
            path: self.path.display().to_string(),
            message,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The file's mapping, for engines that read weights in place.
    pub fn mapping(&self) -> Arc<memmap2::Mmap> {
        Arc::clone(&self.map)
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Result<&SectionEntry, ImageFileError> {
        self.manifest
            .section(name)
            .ok_or_else(|| self.content(format!("no section {name:?}")))
    }

    /// The bytes of a section (checked to be in bounds at open).
    pub fn section_bytes(&self, section: &SectionEntry) -> &[u8] {
        &self.map[section.offset as usize..(section.offset + section.length) as usize]
    }

    /// The tokenizer's vocabulary.
    pub fn tokenizer_data(&self) -> Result<TokenizerData, ImageFileError> {
        let section = self.section(&self.manifest.tokenizer.section)?;
        TokenizerData::decode(self.section_bytes(section)).map_err(|e| self.invalid(e))
    }

    /// The tensor called `name`, decoded to `f32` in row order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ImageFileError> {
        let entry = self
            .manifest
            .tensor(name)
            .ok_or_else(|| self.content(format!("no tensor {name:?}")))?;
        let section = &self.manifest.sections[entry.section as usize];
        let data = &self.section_bytes(section)[entry.offset as usize..][..entry.length as usize];
        Ok(decode_tensor(entry, data))
    }
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes a tensor's bytes (as laid out by [`TensorEntry::layout`]) to `f32`, row-major.
pub fn decode_tensor(entry: &TensorEntry, data: &[u8]) -> Vec<f32> {
    match entry.encoding {
        TensorEncoding::F32 => {
            let (cols, rows) = entry.rows();
            f32s(&data[..(cols * rows * 4) as usize]).collect()
        }
        TensorEncoding::Int8Block32 | TensorEncoding::Int4Block32 => {
            let (cols, rows) = entry.rows();
            let layout = TensorEntry::layout(entry.encoding, cols, rows);
            let (cols, rows) = (cols as usize, rows as usize);
            let quants = &data[..layout.quants.1 as usize];
            let array = |(offset, length): (u64, u64)| -> Vec<f32> {
                f32s(&data[offset as usize..][..length as usize]).collect()
            };
            let scales = array(layout.scales);
            if entry.encoding == TensorEncoding::Int8Block32 {
                (0..rows)
                    .flat_map(|row| int8::row(quants, &scales, cols, row))
                    .collect()
            } else {
                let mins = array(layout.mins);
                (0..rows)
                    .flat_map(|row| int4::row(quants, &scales, &mins, cols, row))
                    .collect()
            }
        }
    }
}

/// A tensor's bytes `data` with its arrays de-interleaved into the standard row-major layout of
/// ONNX `MatMulNBits`, at the offsets [`TensorEntry::layout`] gives them (the rest zero):
///
/// - int8: `rows × cols` bytes at the quants' offset, `rows × cols / 32` little-endian f32
///   scales at the scales' offset;
/// - 4-bit: `rows × cols / 2` bytes at the quants' offset (element `2i` in byte `i`'s low
///   nibble, `2i + 1` in its high one), the scales as for int8, and at the minimums' offset
///   `MatMulNBits`' float zero points `z = −m / d` (value = `d · (q − z)`). A block with `d = 0`
///   (every value `m`) becomes scale `m`, zero point −1 and nibbles 0, which is exact.
///
/// An `F32` tensor is returned as it is.
pub fn standard_layout(entry: &TensorEntry, data: &[u8]) -> Vec<u8> {
    let (cols, rows) = entry.rows();
    let layout = TensorEntry::layout(entry.encoding, cols, rows);
    let (cols, rows) = (cols as usize, rows as usize);
    match entry.encoding {
        TensorEncoding::F32 => data.to_vec(),
        TensorEncoding::Int8Block32 => {
            let (quants, scales) = (layout.quants.0 as usize, layout.scales.0 as usize);
            let stored = &data[quants..][..layout.quants.1 as usize];
            let stored_scales = &data[scales..][..layout.scales.1 as usize];
            let blocks = cols / BLOCK;
            let mut out = vec![0u8; data.len()];
            for row in 0..rows {
                for col in 0..cols {
                    out[quants + row * cols + col] = stored[int8::quant_index(cols, row, col)];
                }
                for block in 0..blocks {
                    let from = 4 * scale_index(cols, row, block);
                    let to = scales + 4 * (row * blocks + block);
                    out[to..to + 4].copy_from_slice(&stored_scales[from..from + 4]);
                }
            }
            out
        }
        TensorEncoding::Int4Block32 => {
            let (quants, scales, mins) = (
                layout.quants.0 as usize,
                layout.scales.0 as usize,
                layout.mins.0 as usize,
            );
            let stored = &data[quants..][..layout.quants.1 as usize];
            let f32_at = |at: usize| {
                f32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
            };
            let blocks = cols / BLOCK;
            let mut out = vec![0u8; data.len()];
            for row in 0..rows {
                for block in 0..blocks {
                    let from = 4 * scale_index(cols, row, block);
                    let (d, m) = (f32_at(scales + from), f32_at(mins + from));
                    let (scale, zero_point, constant) = if d == 0.0 {
                        (m, -1.0f32, true)
                    } else {
                        (d, -m / d, false)
                    };
                    let at = row * blocks + block;
                    out[scales + 4 * at..][..4].copy_from_slice(&scale.to_le_bytes());
                    out[mins + 4 * at..][..4].copy_from_slice(&zero_point.to_le_bytes());
                    if constant {
                        continue;
                    }
                    for j in 0..BLOCK {
                        let col = BLOCK * block + j;
                        let i = row * cols + col;
                        out[quants + i / 2] |=
                            int4::nibble(stored, cols, row, col) << (4 * (i % 2));
                    }
                }
            }
            out
        }
    }
}

/// One tensor's encoded data, ready to be placed in a section.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTensor {
    /// Name.
    pub name: String,
    /// Dimensions, fastest first.
    pub dims: Vec<u64>,
    /// Encoding of `bytes`.
    pub encoding: TensorEncoding,
    /// The quants and scales as laid out by [`TensorEntry::layout`].
    pub bytes: Vec<u8>,
}

impl EncodedTensor {
    /// Lays out `quants` and `scales` (empty for `F32`), given row-major, for a `dims` tensor:
    /// rows of blocks are interleaved in groups as [`TensorEntry::layout`] stores them. A
    /// 4-bit tensor gets minimums 0 (see [`EncodedTensor::int4`]).
    pub fn new(
        name: &str,
        dims: &[u64],
        encoding: TensorEncoding,
        quants: &[u8],
        scales: &[f32],
    ) -> Self {
        let cols = dims.first().copied().unwrap_or(0);
        let rows = dims.iter().skip(1).product();
        let layout = TensorEntry::layout(encoding, cols, rows);
        let mut bytes = vec![0u8; layout.total() as usize];
        match encoding {
            TensorEncoding::F32 => bytes[..quants.len()].copy_from_slice(quants),
            TensorEncoding::Int4Block32 => return Self::int4(name, dims, quants, scales, &[]),
            TensorEncoding::Int8Block32 => {
                let (cols, rows) = (cols as usize, rows as usize);
                let (stored, stored_scales) = bytes.split_at_mut(layout.scales.0 as usize);
                // Padding rows: quants 128 (zero) and scales 0.
                stored[..layout.quants.1 as usize].fill(int8::ZERO as u8);
                for (i, &q) in quants.iter().enumerate().take(rows * cols) {
                    stored[int8::quant_index(cols, i / cols, i % cols)] = q;
                }
                let blocks = cols / BLOCK;
                for (i, v) in scales.iter().enumerate().take(rows * blocks) {
                    let at = 4 * scale_index(cols, i / blocks, i % blocks);
                    stored_scales[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        EncodedTensor {
            name: name.into(),
            dims: dims.to_vec(),
            encoding,
            bytes,
        }
    }
}

impl EncodedTensor {
    /// Lays out a 4-bit tensor given row-major: `quants` one value 0–15 per byte, one scale and
    /// one minimum per block of 32 (missing minimums are 0). Padding rows are zero.
    pub fn int4(name: &str, dims: &[u64], quants: &[u8], scales: &[f32], mins: &[f32]) -> Self {
        let cols = dims.first().copied().unwrap_or(0);
        let rows = dims.iter().skip(1).product();
        let layout = TensorEntry::layout(TensorEncoding::Int4Block32, cols, rows);
        let (cols, rows) = (cols as usize, rows as usize);
        let mut bytes = vec![0u8; layout.total() as usize];
        for (i, &q) in quants.iter().enumerate().take(rows * cols) {
            int4::set_nibble(&mut bytes, cols, i / cols, i % cols, q);
        }
        let blocks = cols / BLOCK;
        for (offset, values) in [(layout.scales.0, scales), (layout.mins.0, mins)] {
            for (i, v) in values.iter().enumerate().take(rows * blocks) {
                let at = offset as usize + 4 * scale_index(cols, i / blocks, i % blocks);
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        EncodedTensor {
            name: name.into(),
            dims: dims.to_vec(),
            encoding: TensorEncoding::Int4Block32,
            bytes,
        }
    }
}

/// Lays out and writes an image: the manifest's `tensors` and `sections` are filled in here.
#[derive(Debug)]
pub struct ImageWriter {
    manifest: Manifest,
    tokenizer: TokenizerData,
    tensors: Vec<EncodedTensor>,
    graph: Option<Vec<u8>>,
}

/// Name of the section holding the weights.
pub const WEIGHTS_SECTION: &str = "weights";
/// Name of the section holding the ONNX graph.
pub const GRAPH_SECTION: &str = "onnx";

impl ImageWriter {
    /// An image for `manifest` (its `tensors`/`sections` are replaced) and `tokenizer`.
    pub fn new(manifest: Manifest, tokenizer: TokenizerData) -> Self {
        ImageWriter {
            manifest,
            tokenizer,
            tensors: Vec::new(),
            graph: None,
        }
    }

    /// Sets the ONNX graph (its external data refers to offsets in the weights section, as
    /// given by [`ImageWriter::tensor_entries`]).
    pub fn set_graph(&mut self, onnx: Vec<u8>) {
        self.graph = Some(onnx);
    }

    /// Where each tensor added so far will lie: `offset` is relative to the weights section.
    pub fn tensor_entries(&self) -> Vec<TensorEntry> {
        let section = if self.graph.is_some() { 2 } else { 1 };
        let mut offset = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let length = align_up(t.bytes.len() as u64);
                let entry = TensorEntry {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    encoding: t.encoding,
                    section,
                    offset,
                    length,
                };
                offset += length;
                entry
            })
            .collect()
    }

    /// Adds a tensor to the weights section.
    pub fn add_tensor(&mut self, tensor: EncodedTensor) {
        self.tensors.push(tensor);
    }

    /// Sets what a device runs before switching to the image.
    pub fn set_self_test(&mut self, self_test: SelfTest) {
        self.manifest.self_test = self_test;
    }

    /// The whole image.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        let tokenizer = self.tokenizer.encode();
        self.manifest.tensors = self.tensor_entries();
        let mut weights = Vec::new();
        for (tensor, entry) in self.tensors.iter().zip(&self.manifest.tensors) {
            weights.extend_from_slice(&tensor.bytes);
            weights.resize((entry.offset + entry.length) as usize, 0);
        }
        self.manifest.tokenizer.section = "tokenizer".into();
        let mut bodies: Vec<(&str, &[u8])> = vec![("tokenizer", &tokenizer)];
        if let Some(graph) = &self.graph {
            bodies.push((GRAPH_SECTION, graph));
        }
        bodies.push((WEIGHTS_SECTION, &weights));
        assemble(&mut self.manifest, &bodies)
    }

    /// Writes the image to `path` through [`write_atomically`], so an interrupted write never
    /// leaves a damaged image under the final name.
    pub fn write(&mut self, path: &Path) -> Result<u64, ImageFileError> {
        let bytes = self.to_bytes();
        write_atomically(path, &bytes)?;
        Ok(bytes.len() as u64)
    }
}

/// Lays out an image: the header, `manifest` (its `sections` are replaced by `bodies`, in
/// order, each on a 64-byte boundary with its SHA-256), then the bodies.
pub fn assemble(manifest: &mut Manifest, bodies: &[(&str, &[u8])]) -> Vec<u8> {
    // The manifest's length depends on the offsets it holds: lay out with placeholder
    // offsets, then again with the real ones until the length is stable.
    let mut manifest_len = 0u64;
    loop {
        let mut offset = align_up(HEADER_LEN as u64 + manifest_len);
        manifest.sections = bodies
            .iter()
            .map(|(name, body)| {
                let entry = SectionEntry {
                    name: (*name).into(),
                    offset,
                    length: body.len() as u64,
                    sha256: sha256(body),
                };
                offset = align_up(offset + body.len() as u64);
                entry
            })
            .collect();
        let encoded = manifest.to_bytes().len() as u64;
        if encoded == manifest_len {
            break;
        }
        manifest_len = encoded;
    }
    let manifest_bytes = manifest.to_bytes();
    // Without sections the file ends after the manifest (not at 0, which no header allows).
    let end_of_manifest = HEADER_LEN as u64 + manifest_bytes.len() as u64;
    let last = manifest
        .sections
        .last()
        .map_or(end_of_manifest, |s| s.offset + s.length);
    let header = ImageHeader {
        version: IMAGE_VERSION,
        manifest_len: manifest_bytes.len() as u32,
        manifest_sha256: sha256(&manifest_bytes),
        file_len: last,
        image_version: manifest.image_version,
    };
    let mut out = Vec::with_capacity(last as usize);
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&manifest_bytes);
    for ((_, body), section) in bodies.iter().zip(&manifest.sections) {
        out.resize(section.offset as usize, 0);
        out.extend_from_slice(body);
    }
    out
}

/// Writes `bytes` to `path` through `<path>.part`, synced and then renamed into place: readers
/// see the old file or the whole new one, never a partial one. The `.part` file is removed if
/// the write fails.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageFileError> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let io = |action, source| ImageFileError::Io {
        action,
        path: part.clone(),
        source,
    };
    let mut file = File::create(&part).map_err(|e| io("cannot create", e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("cannot write", e));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    drop_from_page_cache(&file);
    std::fs::rename(&part, path).map_err(|e| io("cannot rename", e))
}

/// Drops a written (and synced) file's pages from the page cache. Written, the cache holds it in
/// small pages; read back through [`Image::open`]'s mapping (advised `MADV_HUGEPAGE`), the
/// kernel reads it into 2 MiB pages and maps them whole, and the int8 kernels stream the weights
/// measurably faster (SmolLM2 decode 112–118 → 127–138 tok/s on the development machine).
fn drop_from_page_cache(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain advice on an open descriptor; it reads or writes no memory of ours.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}
