//! [`Tensor`]: a device buffer viewed through a shape, strides and an element offset.
//!
//! Views (`reshape` of contiguous data, `permute`, `transpose`, `narrow`, `expand`,
//! `unsqueeze`, `squeeze`) share the buffer and cost nothing; kernels read through the
//! strides. `contiguous` materialises a row-major copy when one is needed.

use std::sync::atomic::{AtomicBool, Ordering};

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::device::Device;
use crate::dispatch;
use crate::dtype::{DType, Element, decode_f64, encode_f64};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::cast::require_bf16_device;
use crate::shape::{contiguous_strides, normalize_axis, numel};

/// A strided view of a device buffer.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) device: Device,
    pub(crate) handle: Handle,
    /// Offset of element `[0, …, 0]` in the buffer, in elements.
    pub(crate) offset: usize,
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}, shape {:?}, strides {:?}, offset {}, {})",
            self.dtype, self.shape, self.strides, self.offset, self.device
        )
    }
}

static POISON: AtomicBool = AtomicBool::new(false);

/// When on, every freshly allocated output buffer is filled with NaN (floats) or
/// `0xDEADBEEF` (u32) before a kernel writes it, so an element a kernel forgets to write
/// shows up in a test. Tests turn it on; it costs one fill launch per allocation.
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

impl Tensor {
    // ---- construction ----------------------------------------------------------------

    /// Upload host data with the given shape.
    pub fn from_slice<E: Element>(data: &[E], shape: &[usize], device: &Device) -> Result<Tensor> {
        check_len("from_slice", data.len(), shape)?;
        Ok(Self::from_bytes(
            &E::to_bytes(data),
            shape,
            E::DTYPE,
            device,
        ))
    }

    /// Upload f64 host data converted to `dtype`.
    pub fn from_f64(
        data: &[f64],
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        check_len("from_f64", data.len(), shape)?;
        Ok(Self::from_bytes(
            &encode_f64(data, dtype),
            shape,
            dtype,
            device,
        ))
    }

    /// A rank-0 tensor holding `value`.
    pub fn scalar(value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Self::from_f64(&[value], &[], dtype, device)
    }

    fn from_bytes(bytes: &[u8], shape: &[usize], dtype: DType, device: &Device) -> Tensor {
        // Zero-sized buffers are not allowed by every backend: keep one element.
        let handle = dispatch!(device, c => if bytes.is_empty() {
            c.empty(dtype.size())
        } else {
            c.create_from_slice(bytes)
        });
        Tensor {
            device: device.clone(),
            handle,
            offset: 0,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            dtype,
        }
    }

    /// An uninitialised contiguous tensor (poisoned when [`set_poison_outputs`] is on).
    pub(crate) fn empty(shape: &[usize], dtype: DType, device: &Device) -> Tensor {
        let bytes = numel(shape).max(1) * dtype.size();
        let handle = dispatch!(device, c => c.empty(bytes));
        let t = Tensor {
            device: device.clone(),
            handle,
            offset: 0,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            dtype,
        };
        if POISON.load(Ordering::Relaxed) {
            kernels::fill::fill_poison(&t);
        }
        t
    }

    /// A contiguous tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        require_bf16_device("full", dtype, device)?;
        let t = Tensor::empty(shape, dtype, device);
        kernels::fill::fill(&t, value);
        Ok(t)
    }

    /// Zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Self::full(shape, 0.0, dtype, device)
    }

    /// Ones.
    pub fn ones(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Self::full(shape, 1.0, dtype, device)
    }

    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(&self.shape, self.dtype, &self.device)
    }

    /// Ones with this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(&self.shape, self.dtype, &self.device)
    }

    // ---- metadata ----------------------------------------------------------------------

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Element offset of this view in its buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Rank (number of axes).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    /// Size of one axis (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape[normalize_axis("dim", axis, self.rank())?])
    }
    /// Whether the view is row-major without gaps (size-1 axes may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for d in (0..self.rank()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }

    // ---- host transfer -----------------------------------------------------------------

    /// Copy to the host as `E`, which must match the dtype.
    pub fn to_vec<E: Element>(&self) -> Result<Vec<E>> {
        if E::DTYPE != self.dtype {
            return Err(Error::dtype(
                "to_vec",
                format!(
                    "tensor is {} but {} was requested",
                    self.dtype,
                    E::DTYPE.name()
                ),
            ));
        }
        Ok(E::from_bytes(&self.read_bytes()?))
    }

    /// Copy to the host, widened to f64.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(decode_f64(&self.read_bytes()?, self.dtype))
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("expected one element, tensor has shape {:?}", self.shape),
            ));
        }
        Ok(self.to_f64_vec()?[0])
    }

    fn read_bytes(&self) -> Result<Vec<u8>> {
        let n = self.numel();
        if n == 0 {
            return Ok(Vec::new());
        }
        let t = self.contiguous()?;
        let bytes = dispatch!(t.device, c => c.read_one(t.handle.clone()))
            .map_err(|e| Error::kernel("read", format!("{e:?}")))?;
        let start = t.offset * t.dtype.size();
        let end = start + n * t.dtype.size();
        if bytes.len() < end {
            return Err(Error::kernel(
                "read",
                format!("buffer holds {} bytes, view needs {end}", bytes.len()),
            ));
        }
        Ok(bytes[start..end].to_vec())
    }

    // ---- views -------------------------------------------------------------------------

    pub(crate) fn view(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor {
            device: self.device.clone(),
            handle: self.handle.clone(),
            offset,
            shape,
            strides,
            dtype: self.dtype,
        }
    }

    /// Same data with a new shape (a view when contiguous, otherwise a copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) into {shape:?} ({} elements)",
                    self.shape,
                    self.numel(),
                    numel(shape)
                ),
            ));
        }
        let base = self.contiguous()?;
        Ok(base.view(shape.to_vec(), contiguous_strides(shape), base.offset))
    }

    /// Reorder axes: output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank()
            || perm
                .iter()
                .any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::arg(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the {} axes of {:?}",
                    self.rank(),
                    self.shape
                ),
            ));
        }
        let shape = perm.iter().map(|&p| self.shape[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(self.view(shape, strides, self.offset))
    }

    /// Swap two axes.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let a = normalize_axis("transpose", a, self.rank())?;
        let b = normalize_axis("transpose", b, self.rank())?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// The sub-range `start..start + len` of one axis.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let ax = normalize_axis("narrow", axis, self.rank())?;
        if start + len > self.shape[ax] {
            return Err(Error::arg(
                "narrow",
                format!(
                    "range {start}..{} exceeds axis {ax} of size {} (shape {:?})",
                    start + len,
                    self.shape[ax],
                    self.shape
                ),
            ));
        }
        let mut shape = self.shape.clone();
        shape[ax] = len;
        Ok(self.view(
            shape,
            self.strides.clone(),
            self.offset + start * self.strides[ax],
        ))
    }

    /// Index one position of an axis, removing that axis.
    pub fn select(&self, axis: isize, index: usize) -> Result<Tensor> {
        let ax = normalize_axis("select", axis, self.rank())?;
        self.narrow(ax as isize, index, 1)?.squeeze(ax as isize)
    }

    /// Broadcast to `shape` (NumPy rules) without copying: new leading axes and size-1 axes
    /// get stride 0.
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.len() < self.rank() {
            return Err(Error::shape(
                "expand",
                format!(
                    "cannot expand {:?} to the lower rank shape {shape:?}",
                    self.shape
                ),
            ));
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &s) in shape.iter().enumerate() {
            if i < lead {
                continue;
            }
            let d = self.shape[i - lead];
            if d == s {
                strides[i] = self.strides[i - lead];
            } else if d != 1 {
                return Err(Error::shape(
                    "expand",
                    format!(
                        "cannot expand {:?} to {shape:?} (axis {i}: {d} vs {s})",
                        self.shape
                    ),
                ));
            }
        }
        Ok(self.view(shape.to_vec(), strides, self.offset))
    }

    /// Insert a size-1 axis at `axis` (which may equal the rank).
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor> {
        let ax = normalize_axis("unsqueeze", axis, self.rank() + 1)?;
        let mut shape = self.shape.clone();
        let mut strides = self.strides.clone();
        let stride = if ax < self.rank() {
            self.strides[ax] * self.shape[ax]
        } else {
            1
        };
        shape.insert(ax, 1);
        strides.insert(ax, stride);
        Ok(self.view(shape, strides, self.offset))
    }

    /// Remove a size-1 axis.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let ax = normalize_axis("squeeze", axis, self.rank())?;
        if self.shape[ax] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!(
                    "axis {ax} of {:?} has size {}, not 1",
                    self.shape, self.shape[ax]
                ),
            ));
        }
        let mut shape = self.shape.clone();
        let mut strides = self.strides.clone();
        shape.remove(ax);
        strides.remove(ax);
        Ok(self.view(shape, strides, self.offset))
    }

    /// Merge all axes into one.
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// A row-major copy, or `self` when already contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        require_bf16_device("contiguous", self.dtype, &self.device)?;
        let out = Tensor::empty(&self.shape, self.dtype, &self.device);
        kernels::copy::copy(self, &out);
        Ok(out)
    }

    /// [`contiguous`](Self::contiguous) of `self` and `other` at once: where both take a
    /// copy and both copies are tiled transposes of one dtype on one device (a
    /// channels-first operand and a weight reordered for the tensor cores), one launch
    /// moves both.
    pub(crate) fn contiguous_pair(&self, other: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.is_contiguous() || other.is_contiguous() {
            return Ok((self.contiguous()?, other.contiguous()?));
        }
        require_bf16_device("contiguous", self.dtype, &self.device)?;
        require_bf16_device("contiguous", other.dtype, &other.device)?;
        let a = Tensor::empty(&self.shape, self.dtype, &self.device);
        let b = Tensor::empty(&other.shape, other.dtype, &other.device);
        kernels::copy::copy_pair((self, &a), (other, &b));
        Ok((a, b))
    }

    /// Contiguous and starting at element 0 of its buffer: `self` when it already is,
    /// otherwise a copy. Kernels that index a flat buffer without an offset need this.
    pub fn compact(&self) -> Result<Tensor> {
        if self.is_contiguous() && self.offset == 0 {
            Ok(self.clone())
        } else {
            self.deep_clone()
        }
    }

    /// A contiguous copy that never shares this tensor's buffer.
    pub fn deep_clone(&self) -> Result<Tensor> {
        require_bf16_device("deep_clone", self.dtype, &self.device)?;
        let out = Tensor::empty(&self.shape, self.dtype, &self.device);
        kernels::copy::copy(self, &out);
        Ok(out)
    }

    /// Write `src` into this view (shapes must match exactly; dtypes must match).
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        same_device("assign", self, src)?;
        if self.shape != src.shape || self.dtype != src.dtype {
            return Err(Error::shape(
                "assign",
                format!(
                    "destination is {:?} {}, source is {:?} {}",
                    self.shape, self.dtype, src.shape, src.dtype
                ),
            ));
        }
        require_bf16_device("assign", self.dtype, &self.device)?;
        kernels::copy::copy(src, self);
        Ok(())
    }

    /// Join tensors along `axis`; all other axes must match.
    pub fn concat(tensors: &[&Tensor], axis: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::arg("concat", "needs at least one tensor"))?;
        let ax = normalize_axis("concat", axis, first.rank())?;
        let mut total = 0;
        for (i, t) in tensors.iter().enumerate() {
            same_device("concat", first, t)?;
            if t.dtype != first.dtype {
                return Err(Error::dtype(
                    "concat",
                    format!("tensor 0 is {} but tensor {i} is {}", first.dtype, t.dtype),
                ));
            }
            let compatible = t.rank() == first.rank()
                && (0..t.rank()).all(|d| d == ax || t.shape[d] == first.shape[d]);
            if !compatible {
                return Err(Error::shape(
                    "concat",
                    format!(
                        "tensor {i} has shape {:?}, incompatible with {:?} along axis {ax}",
                        t.shape, first.shape
                    ),
                ));
            }
            total += t.shape[ax];
        }
        require_bf16_device("concat", first.dtype, &first.device)?;
        let mut shape = first.shape.clone();
        shape[ax] = total;
        let out = Tensor::empty(&shape, first.dtype, &first.device);
        let mut start = 0;
        for t in tensors {
            let len = t.shape[ax];
            if len > 0 {
                kernels::copy::copy(t, &out.narrow(ax as isize, start, len)?);
            }
            start += len;
        }
        Ok(out)
    }

    // ---- kernel plumbing ---------------------------------------------------------------

    /// The kernel argument for this view: base buffer (offset passed separately).
    ///
    /// # Safety
    /// Kernels must index within the view described by shape, strides and `self.offset`.
    pub(crate) unsafe fn arg<R: Runtime>(&self) -> TensorArg<R> {
        unsafe {
            TensorArg::from_raw_parts(
                self.handle.clone(),
                self.strides.clone().into(),
                self.shape.clone().into(),
            )
        }
    }

    /// Like [`arg`](Self::arg) but with the view broadcast to `shape` (stride 0 on new or
    /// size-1 axes). The caller has checked broadcast compatibility.
    pub(crate) unsafe fn arg_broadcast<R: Runtime>(&self, shape: &[usize]) -> TensorArg<R> {
        let lead = shape.len() - self.rank();
        let strides: Vec<usize> = (0..shape.len())
            .map(|i| {
                if i < lead || self.shape[i - lead] != shape[i] {
                    0
                } else {
                    self.strides[i - lead]
                }
            })
            .collect();
        unsafe {
            TensorArg::from_raw_parts(self.handle.clone(), strides.into(), shape.to_vec().into())
        }
    }

    /// The buffer as a flat array of `len` elements (for contiguous kernels).
    pub(crate) unsafe fn array_arg<R: Runtime>(&self, len: usize) -> ArrayArg<R> {
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), len) }
    }

    /// Number of elements the underlying buffer holds.
    pub(crate) fn buffer_len(&self) -> usize {
        self.handle.size() as usize / self.dtype.size()
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if len != numel(shape) {
        return Err(Error::shape(
            op,
            format!(
                "{len} values given for shape {shape:?} ({} elements)",
                numel(shape)
            ),
        ));
    }
    Ok(())
}

/// Both tensors must live on the same device.
pub(crate) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device != b.device {
        return Err(Error::Device {
            op,
            msg: format!("operands are on {} and {}", a.device, b.device),
        });
    }
    Ok(())
}
