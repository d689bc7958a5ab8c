//! What is specific to the guest architecture. hvm runs x86_64 guests only.
pub mod x86_64;
