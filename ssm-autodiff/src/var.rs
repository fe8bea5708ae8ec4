//! [`Var`]: a tensor that remembers how it was made, and reverse-mode `backward`.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ssm_runtime::{Error, Result, Tensor};

/// The backward of one op: maps the gradient of its output to one gradient per input
/// (`None` where an input gets no gradient). Runs at most once; whatever it captured
/// (the op's saved tensors) is freed when it returns.
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send>;

pub(crate) struct Node {
    id: u64,
    name: &'static str,
    /// `None` for leaves; taken (and so freed) when backward runs.
    backward: Mutex<Option<BackwardFn>>,
    parents: Vec<Option<Arc<Node>>>,
    parent_shapes: Vec<Vec<usize>>,
}

impl Node {
    fn is_leaf(&self) -> bool {
        self.parents.is_empty()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static NO_GRAD: Cell<u32> = const { Cell::new(0) };
}

/// Run `f` without recording a graph (inference); nests.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = NoGradGuard::new();
    f()
}

/// While alive, ops on this thread record no graph.
pub struct NoGradGuard(());

impl NoGradGuard {
    /// Start a no-grad scope.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NO_GRAD.with(|c| c.set(c.get() + 1));
        NoGradGuard(())
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD.with(|c| c.set(c.get() - 1));
    }
}

/// Whether ops currently record a graph.
pub fn grad_enabled() -> bool {
    NO_GRAD.with(|c| c.get() == 0)
}

/// A tensor value plus, when it depends on something that requires a gradient, the graph
/// node that made it. Cloning is cheap and shares the node.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    node: Option<Arc<Node>>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(n) => write!(f, "Var({:?}, node {} '{}')", self.value, n.id, n.name),
            None => write!(f, "Var({:?}, constant)", self.value),
        }
    }
}

impl Var {
    /// A value that gets no gradient.
    pub fn constant(value: Tensor) -> Var {
        Var { value, node: None }
    }

    /// A leaf that requires a gradient; `backward` reports its gradient under [`Var::id`].
    pub fn leaf(value: Tensor) -> Var {
        let node = Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: "leaf",
            backward: Mutex::new(None),
            parents: Vec::new(),
            parent_shapes: Vec::new(),
        };
        Var {
            value,
            node: Some(Arc::new(node)),
        }
    }

    /// The result of a differentiable op. `backward` gets the output gradient and returns
    /// one gradient per input (shapes must equal the inputs' shapes). Records nothing when
    /// no input requires a gradient or inside [`no_grad`].
    pub fn from_op(
        name: &'static str,
        value: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Var {
        if !grad_enabled() || inputs.iter().all(|v| v.node.is_none()) {
            return Var::constant(value);
        }
        let node = Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            backward: Mutex::new(Some(Box::new(backward))),
            parents: inputs.iter().map(|v| v.node.clone()).collect(),
            parent_shapes: inputs.iter().map(|v| v.value.shape().to_vec()).collect(),
        };
        Var {
            value,
            node: Some(Arc::new(node)),
        }
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value, dropping the graph link.
    pub fn into_value(self) -> Tensor {
        self.value
    }

    /// Shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// Whether a gradient flows into this value.
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// The same value cut from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    /// Identity of the graph node (leaves keep theirs for life), `None` for constants.
    pub fn id(&self) -> Option<u64> {
        self.node.as_ref().map(|n| n.id)
    }

    /// Whether the graph input `i` of this op needs a gradient (for ops that skip work).
    pub(crate) fn needs(inputs: &[&Var]) -> Vec<bool> {
        inputs.iter().map(|v| v.node.is_some()).collect()
    }

    /// Backpropagate from a single-element value (seed 1).
    pub fn backward(&self) -> Result<Gradients> {
        if self.value.numel() != 1 {
            return Err(Error::Shape {
                op: "backward",
                msg: format!(
                    "backward() needs a one-element value, got shape {:?}; use backward_with(seed)",
                    self.shape()
                ),
            });
        }
        let seed = self.value.ones_like()?;
        self.backward_with(&seed)
    }

    /// Backpropagate with an explicit output gradient `seed` (same shape as the value).
    /// Consumes the graph: each op's backward runs once and frees what it saved.
    pub fn backward_with(&self, seed: &Tensor) -> Result<Gradients> {
        if seed.shape() != self.shape() || seed.dtype() != self.value.dtype() {
            return Err(Error::Shape {
                op: "backward",
                msg: format!(
                    "seed is {} {:?} but the value is {} {:?}",
                    seed.dtype(),
                    seed.shape(),
                    self.value.dtype(),
                    self.shape()
                ),
            });
        }
        let root = self.node.as_ref().ok_or_else(|| Error::Argument {
            op: "backward",
            msg: "the value does not depend on any leaf that requires a gradient".into(),
        })?;
        let order = topo_order(root);
        let mut pending: HashMap<u64, Tensor> = HashMap::new();
        pending.insert(root.id, seed.clone());
        let mut leaves = HashMap::new();
        for node in order {
            let Some(grad) = pending.remove(&node.id) else {
                continue;
            };
            if node.is_leaf() {
                leaves.insert(node.id, grad);
                continue;
            }
            let f = node
                .backward
                .lock()
                .map_err(|_| Error::Argument {
                    op: "backward",
                    msg: "graph lock poisoned".into(),
                })?
                .take()
                .ok_or_else(|| Error::Argument {
                    op: "backward",
                    msg: format!(
                        "the graph through '{}' was already used by a backward pass; \
                         recompute the forward to differentiate again",
                        node.name
                    ),
                })?;
            let grads = f(&grad)?;
            if grads.len() != node.parents.len() {
                return Err(Error::Kernel {
                    op: node.name,
                    msg: format!(
                        "backward returned {} gradients for {} inputs",
                        grads.len(),
                        node.parents.len()
                    ),
                });
            }
            for ((parent, g), shape) in node.parents.iter().zip(grads).zip(&node.parent_shapes) {
                let (Some(parent), Some(g)) = (parent, g) else {
                    continue;
                };
                if g.shape() != shape.as_slice() {
                    return Err(Error::Kernel {
                        op: node.name,
                        msg: format!(
                            "backward produced a gradient of shape {:?} for an input of shape {shape:?}",
                            g.shape()
                        ),
                    });
                }
                let acc = match pending.remove(&parent.id) {
                    Some(prev) => prev.add(&g)?,
                    None => g,
                };
                pending.insert(parent.id, acc);
            }
        }
        Ok(Gradients { grads: leaves })
    }
}

/// Nodes reachable from `root`, each after every node that consumes it.
fn topo_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut post = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: (node, next parent index to visit).
    let mut stack: Vec<(Arc<Node>, usize)> = vec![(root.clone(), 0)];
    seen.insert(root.id);
    while let Some((node, i)) = stack.pop() {
        if i < node.parents.len() {
            stack.push((node.clone(), i + 1));
            if let Some(p) = &node.parents[i]
                && seen.insert(p.id)
            {
                stack.push((p.clone(), 0));
            }
        } else {
            post.push(node);
        }
    }
    post.reverse();
    post
}

/// Gradients of the leaves reached by a backward pass.
#[derive(Debug, Default)]
pub struct Gradients {
    grads: HashMap<u64, Tensor>,
}

impl Gradients {
    /// Gradient of a leaf, if the pass reached it.
    pub fn get(&self, leaf: &Var) -> Option<&Tensor> {
        leaf.id().and_then(|id| self.grads.get(&id))
    }

    /// Gradient by leaf id.
    pub fn get_id(&self, id: u64) -> Option<&Tensor> {
        self.grads.get(&id)
    }

    /// Take a gradient out.
    pub fn remove(&mut self, leaf: &Var) -> Option<Tensor> {
        leaf.id().and_then(|id| self.grads.remove(&id))
    }

    /// Replace (or set) a leaf's gradient.
    pub fn insert(&mut self, id: u64, grad: Tensor) {
        self.grads.insert(id, grad);
    }

    /// Add another pass's gradients into these (gradient accumulation over micro-batches).
    pub fn accumulate(&mut self, other: Gradients) -> Result<()> {
        for (id, g) in other.grads {
            let sum = match self.grads.remove(&id) {
                Some(prev) => prev.add(&g)?,
                None => g,
            };
            self.grads.insert(id, sum);
        }
        Ok(())
    }

    /// Number of leaves with a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no leaf got a gradient.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Leaf ids with gradients.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.grads.keys().copied()
    }
}
