//! The HAIP server: one session engine and its WebSocket, SSE and HTTP streaming adapters.
//! Built in the next step of the project; see docs/STATUS.md.
