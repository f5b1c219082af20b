//! The HTTP transport of wiremux (being written).
