//! Decoding and validation errors.

/// Why bytes from the network were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The message is longer than the limit for its kind.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared or actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Fewer bytes than the frame header or declared length.
    #[error("truncated message: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes required.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The protobuf encoding is invalid.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The message speaks another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {expected})")]
    Version {
        /// Version in the message.
        got: u32,
        /// Our version.
        expected: u32,
    },
    /// A field is missing, out of range or inconsistent.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
