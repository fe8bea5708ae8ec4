//! Errors returned at every public boundary of the runtime.

use std::fmt;

/// What went wrong, with the name of the operation that refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Operand shapes do not fit the operation.
    Shape {
        /// Operation name, e.g. `"add"` or `"matmul"`.
        op: &'static str,
        /// What was expected and what came.
        msg: String,
    },
    /// Operand dtypes do not fit the operation.
    DType {
        /// Operation name.
        op: &'static str,
        /// What was expected and what came.
        msg: String,
    },
    /// Operands live on different devices.
    Device {
        /// Operation name.
        op: &'static str,
        /// Which devices met.
        msg: String,
    },
    /// Any other invalid argument (axis out of range, negative size, …).
    Argument {
        /// Operation name.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// No usable compute device.
    NoDevice(String),
    /// A kernel failed to compile or run, or a device transfer failed.
    Kernel {
        /// Operation name.
        op: &'static str,
        /// The runtime's report.
        msg: String,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub(crate) fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Error::DType {
            op,
            msg: msg.into(),
        }
    }
    pub(crate) fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Argument {
            op,
            msg: msg.into(),
        }
    }
    pub(crate) fn kernel(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Kernel {
            op,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "{op}: shape error: {msg}"),
            Error::DType { op, msg } => write!(f, "{op}: dtype error: {msg}"),
            Error::Device { op, msg } => write!(f, "{op}: device error: {msg}"),
            Error::Argument { op, msg } => write!(f, "{op}: invalid argument: {msg}"),
            Error::NoDevice(msg) => write!(f, "no usable compute device: {msg}"),
            Error::Kernel { op, msg } => write!(f, "{op}: kernel failure: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias used throughout ssm.
pub type Result<T> = std::result::Result<T, Error>;
