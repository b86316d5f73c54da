//! The HAIP client SDK. Built in a later step of the project; see docs/STATUS.md.
