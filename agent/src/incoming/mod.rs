pub mod http;
pub mod mirror;
