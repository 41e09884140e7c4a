"""Mixture-of-Experts: a router sends each token to a few of many feed-forward experts.

One concept per module, read in this order:
    experts.py        the experts: stacked copies of the feed-forward
    routing.py        what every router produces (Routing) and the float32 router scores
    topk.py           softmax top-k, Switch top-1, noisy top-k
    capacity.py       expert capacity and dropped tokens
    expert_choice.py  experts pick their tokens
    sigmoid_bias.py   sigmoid scores + a selection bias (aux-loss-free balancing), DeepSeek-V3 groups
    llama4_router.py  Llama 4: sigmoid top-1 whose gate scales the expert's input
    soft.py           soft MoE: slots as mixes of tokens
    shared.py         shared experts every token uses
    losses.py         load-balancing loss and router z-loss
    dispatch.py       loop / dense / grouped (/ triton) backends
    layer.py          the MoE layer that puts them together
    sizes.py          total vs active parameters per token
"""
from .capacity import apply_capacity, capacity
from .dispatch import DISPATCH_FUNCTIONS, dispatch_dense, dispatch_grouped, dispatch_loop, get_dispatch
from .expert_choice import ExpertChoiceRouter
from .experts import Experts, expert_mlp
from .layer import MoE, make_router
from .llama4_router import Llama4Router
from .losses import expert_fractions, load_balancing_loss, router_z_loss
from .routing import Router, Routing, scatter_gates
from .shared import SharedExperts
from .sigmoid_bias import SigmoidBiasRouter
from .sizes import moe_parameter_counts
from .soft import SoftRouter
from .topk import NoisyTopKRouter, SwitchRouter, TopKRouter, select_top_k

__all__ = [
    "MoE", "make_router", "Routing", "Router", "TopKRouter", "SwitchRouter", "NoisyTopKRouter",
    "ExpertChoiceRouter", "SigmoidBiasRouter", "Llama4Router", "SoftRouter", "SharedExperts", "Experts", "expert_mlp",
    "capacity", "apply_capacity", "select_top_k", "load_balancing_loss", "router_z_loss", "expert_fractions",
    "dispatch_loop", "dispatch_dense", "dispatch_grouped", "get_dispatch", "DISPATCH_FUNCTIONS",
    "moe_parameter_counts", "scatter_gates",
]
