#[ssm_macros::lpr(channels = 8, kernel = 4)]
pub struct Lpu;
fn main() {}
