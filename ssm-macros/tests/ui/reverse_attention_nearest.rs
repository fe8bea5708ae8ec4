#[ssm_macros::reverse_attention(mode = nearest)]
pub struct Reverse;
fn main() {}
