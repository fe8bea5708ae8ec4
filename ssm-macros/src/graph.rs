//! Expression graphs with hash-consing, algebraic simplification, reverse-mode symbolic
//! differentiation, and lowering to the runtime's fused `Program` instructions.

use std::collections::HashMap;

/// One-operand operations (mirrors `ssm_runtime::FusedUnary`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Op1 {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Silu,
    Softplus,
    SoftplusGrad,
    Gelu,
    GeluGrad,
    Relu,
    Step,
    Abs,
    Sign,
    Square,
    Recip,
}

impl Op1 {
    /// The runtime enum variant's name.
    pub fn variant(self) -> &'static str {
        match self {
            Op1::Neg => "Neg",
            Op1::Exp => "Exp",
            Op1::Log => "Log",
            Op1::Sqrt => "Sqrt",
            Op1::Rsqrt => "Rsqrt",
            Op1::Tanh => "Tanh",
            Op1::Sigmoid => "Sigmoid",
            Op1::Silu => "Silu",
            Op1::Softplus => "Softplus",
            Op1::SoftplusGrad => "SoftplusGrad",
            Op1::Gelu => "Gelu",
            Op1::GeluGrad => "GeluGrad",
            Op1::Relu => "Relu",
            Op1::Step => "Step",
            Op1::Abs => "Abs",
            Op1::Sign => "Sign",
            Op1::Square => "Square",
            Op1::Recip => "Recip",
        }
    }
}

/// Two-operand operations (mirrors `ssm_runtime::FusedBinary`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Op2 {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op2 {
    /// The runtime enum variant's name.
    pub fn variant(self) -> &'static str {
        match self {
            Op2::Add => "Add",
            Op2::Sub => "Sub",
            Op2::Mul => "Mul",
            Op2::Div => "Div",
        }
    }
}

/// A node; operands are indices of earlier nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Node {
    Input(u8),
    Scalar(u8),
    Const(u64),
    Un(Op1, usize),
    Bin(Op2, usize, usize),
    Pow(usize, u64),
}

/// A hash-consed DAG: structurally equal nodes are stored once, so common
/// subexpressions (including those created by differentiation) are shared.
#[derive(Default, Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    index: HashMap<Node, usize>,
}

impl Graph {
    fn intern(&mut self, n: Node) -> usize {
        if let Some(&i) = self.index.get(&n) {
            return i;
        }
        self.nodes.push(n);
        self.index.insert(n, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn as_const(&self, i: usize) -> Option<f64> {
        match self.nodes[i] {
            Node::Const(b) => Some(f64::from_bits(b)),
            _ => None,
        }
    }

    pub fn input(&mut self, j: u8) -> usize {
        self.intern(Node::Input(j))
    }

    pub fn scalar(&mut self, j: u8) -> usize {
        self.intern(Node::Scalar(j))
    }

    pub fn constant(&mut self, v: f64) -> usize {
        // Normalise −0 so that 0 and −0 share a node.
        let v = if v == 0.0 { 0.0 } else { v };
        self.intern(Node::Const(v.to_bits()))
    }

    pub fn unary(&mut self, op: Op1, a: usize) -> usize {
        if let Some(c) = self.as_const(a) {
            let folded = match op {
                Op1::Neg => Some(-c),
                Op1::Exp => Some(c.exp()),
                Op1::Log => Some(c.ln()),
                Op1::Sqrt => Some(c.sqrt()),
                Op1::Square => Some(c * c),
                Op1::Recip => Some(1.0 / c),
                Op1::Abs => Some(c.abs()),
                _ => None,
            };
            if let Some(v) = folded.filter(|v| v.is_finite()) {
                return self.constant(v);
            }
        }
        if op == Op1::Neg
            && let Node::Un(Op1::Neg, x) = self.nodes[a]
        {
            return x;
        }
        self.intern(Node::Un(op, a))
    }

    pub fn binary(&mut self, op: Op2, a: usize, b: usize) -> usize {
        let (ca, cb) = (self.as_const(a), self.as_const(b));
        if let (Some(x), Some(y)) = (ca, cb) {
            let v = match op {
                Op2::Add => x + y,
                Op2::Sub => x - y,
                Op2::Mul => x * y,
                Op2::Div => x / y,
            };
            if v.is_finite() {
                return self.constant(v);
            }
        }
        match op {
            Op2::Add if ca == Some(0.0) => return b,
            Op2::Add | Op2::Sub if cb == Some(0.0) => return a,
            Op2::Sub if ca == Some(0.0) => return self.unary(Op1::Neg, b),
            Op2::Sub if a == b => return self.constant(0.0),
            Op2::Mul if ca == Some(0.0) || cb == Some(0.0) => return self.constant(0.0),
            Op2::Mul if ca == Some(1.0) => return b,
            Op2::Mul | Op2::Div if cb == Some(1.0) => return a,
            Op2::Mul if ca == Some(-1.0) => return self.unary(Op1::Neg, b),
            Op2::Mul if cb == Some(-1.0) => return self.unary(Op1::Neg, a),
            _ => {}
        }
        // Commutative operations in a canonical operand order, for sharing.
        let (a, b) = if matches!(op, Op2::Add | Op2::Mul) && a > b {
            (b, a)
        } else {
            (a, b)
        };
        self.intern(Node::Bin(op, a, b))
    }

    pub fn pow(&mut self, a: usize, p: f64) -> usize {
        if p == 1.0 {
            return a;
        }
        if p == 0.0 {
            return self.constant(1.0);
        }
        if p == 2.0 {
            return self.unary(Op1::Square, a);
        }
        if p == -1.0 {
            return self.unary(Op1::Recip, a);
        }
        self.intern(Node::Pow(a, p.to_bits()))
    }

    pub fn add(&mut self, a: usize, b: usize) -> usize {
        self.binary(Op2::Add, a, b)
    }
    pub fn sub(&mut self, a: usize, b: usize) -> usize {
        self.binary(Op2::Sub, a, b)
    }
    pub fn mul(&mut self, a: usize, b: usize) -> usize {
        self.binary(Op2::Mul, a, b)
    }
    pub fn div(&mut self, a: usize, b: usize) -> usize {
        self.binary(Op2::Div, a, b)
    }
    pub fn neg(&mut self, a: usize) -> usize {
        self.unary(Op1::Neg, a)
    }

    /// Reverse-mode derivative of node `out` with respect to every tensor input, for the
    /// output cotangent `seed` (itself a node, normally `Input(n_inputs)`). Returns one node
    /// per input (a zero constant for inputs the output does not depend on).
    pub fn gradients(&mut self, out: usize, seed: usize, n_inputs: u8) -> Vec<usize> {
        let mut adj: HashMap<usize, usize> = HashMap::new();
        adj.insert(out, seed);
        let order: Vec<usize> = (0..=out)
            .rev()
            .filter(|&i| reaches(&self.nodes, out, i))
            .collect();
        for n in order {
            let Some(&g) = adj.get(&n) else { continue };
            let contributions: Vec<(usize, usize)> = match self.nodes[n] {
                Node::Input(_) | Node::Scalar(_) | Node::Const(_) => vec![],
                Node::Bin(op, a, b) => match op {
                    Op2::Add => vec![(a, g), (b, g)],
                    Op2::Sub => {
                        let ng = self.neg(g);
                        vec![(a, g), (b, ng)]
                    }
                    Op2::Mul => {
                        let ga = self.mul(g, b);
                        let gb = self.mul(g, a);
                        vec![(a, ga), (b, gb)]
                    }
                    Op2::Div => {
                        let ga = self.div(g, b);
                        let t = self.mul(ga, n);
                        let gb = self.neg(t);
                        vec![(a, ga), (b, gb)]
                    }
                },
                Node::Pow(a, p) => {
                    let p = f64::from_bits(p);
                    let pm1 = self.pow(a, p - 1.0);
                    let k = self.constant(p);
                    let d = self.mul(k, pm1);
                    vec![(a, self.mul(g, d))]
                }
                Node::Un(op, a) => {
                    let d = self.local_derivative(op, a, n);
                    vec![(a, self.mul(g, d))]
                }
            };
            for (target, contrib) in contributions {
                let acc = match adj.get(&target) {
                    Some(&prev) => self.add(prev, contrib),
                    None => contrib,
                };
                adj.insert(target, acc);
            }
        }
        (0..n_inputs)
            .map(|j| {
                let node = self.index.get(&Node::Input(j)).copied();
                match node.and_then(|i| adj.get(&i).copied()) {
                    Some(g) => g,
                    None => self.constant(0.0),
                }
            })
            .collect()
    }

    /// d op(a) / da, given the node `n = op(a)`.
    fn local_derivative(&mut self, op: Op1, a: usize, n: usize) -> usize {
        let one = self.constant(1.0);
        match op {
            Op1::Neg => self.constant(-1.0),
            Op1::Exp => n,
            Op1::Log => self.unary(Op1::Recip, a),
            Op1::Sqrt => {
                let half = self.constant(0.5);
                self.div(half, n)
            }
            Op1::Rsqrt => {
                let t = self.div(n, a);
                let k = self.constant(-0.5);
                self.mul(k, t)
            }
            Op1::Tanh => {
                let sq = self.unary(Op1::Square, n);
                self.sub(one, sq)
            }
            Op1::Sigmoid => {
                let c = self.sub(one, n);
                self.mul(n, c)
            }
            Op1::Silu => {
                // silu′ = σ + silu·(1 − σ)
                let s = self.unary(Op1::Sigmoid, a);
                let c = self.sub(one, s);
                let t = self.mul(n, c);
                self.add(s, t)
            }
            Op1::Softplus => self.unary(Op1::SoftplusGrad, a),
            Op1::Gelu => self.unary(Op1::GeluGrad, a),
            Op1::Relu => self.unary(Op1::Step, a),
            Op1::Abs => self.unary(Op1::Sign, a),
            Op1::Square => {
                let two = self.constant(2.0);
                self.mul(two, a)
            }
            Op1::Recip => {
                let sq = self.unary(Op1::Square, n);
                self.neg(sq)
            }
            // Only produced by differentiation; never differentiated again.
            Op1::SoftplusGrad | Op1::GeluGrad | Op1::Step | Op1::Sign => self.constant(0.0),
        }
    }

    /// The nodes needed for `outputs`, renumbered in evaluation order, and the outputs'
    /// new indices.
    pub fn lower(&self, outputs: &[usize]) -> (Vec<Node>, Vec<usize>) {
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = outputs.to_vec();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut live[i], true) {
                continue;
            }
            match self.nodes[i] {
                Node::Un(_, a) | Node::Pow(a, _) => stack.push(a),
                Node::Bin(_, a, b) => stack.extend([a, b]),
                _ => {}
            }
        }
        let mut remap = vec![usize::MAX; self.nodes.len()];
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            remap[i] = out.len();
            out.push(match *n {
                Node::Un(op, a) => Node::Un(op, remap[a]),
                Node::Pow(a, p) => Node::Pow(remap[a], p),
                Node::Bin(op, a, b) => Node::Bin(op, remap[a], remap[b]),
                other => other,
            });
        }
        (out, outputs.iter().map(|&o| remap[o]).collect())
    }
}

/// Whether node `i` is an operand (transitively) of node `out`.
fn reaches(nodes: &[Node], out: usize, i: usize) -> bool {
    if i == out {
        return true;
    }
    let mut stack = vec![out];
    let mut seen = vec![false; nodes.len()];
    while let Some(n) = stack.pop() {
        if n == i {
            return true;
        }
        if n < i || std::mem::replace(&mut seen[n], true) {
            continue;
        }
        match nodes[n] {
            Node::Un(_, a) | Node::Pow(a, _) => stack.push(a),
            Node::Bin(_, a, b) => stack.extend([a, b]),
            _ => {}
        }
    }
    false
}
