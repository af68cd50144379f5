"""MoCo's queue, split-BN and shuffle-BN, in one process and over two gloo ranks on the CPU."""

from __future__ import annotations

import copy
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainer.backbones import small
from trainer.batchnorm import SplitBatchNorm3d, split_batchnorm, split_groups
from trainer.config import TrainConfig
from trainer.moco import MoCo, check_queue, shuffle_batch, unshuffle_batch
from trainer.train import compute_loss

B = 4  # clips per rank: (B, 3, 4, 16, 16) keeps the small backbone cheap


def clips(seed: int, n: int = B) -> torch.Tensor:
    return torch.randn(n, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def moco(seed: int = 0, queue_size: int = 32, **kw) -> MoCo:
    torch.manual_seed(seed)
    return MoCo(small(), dim=8, queue_size=queue_size, momentum=0.9, **kw).train()


def bn(c: int = 3, **kw) -> nn.BatchNorm3d:
    """A plain BN with non-trivial affine parameters and running statistics."""
    layer = nn.BatchNorm3d(c, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in (layer.weight, layer.bias, layer.running_mean):
            t.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return layer


# Queue


def test_enqueue_writes_the_step_keys_at_the_pointer_and_wraps():
    m = moco(queue_size=12)  # 8 keys a step (4 clips, symmetric): the second step wraps
    before = m.queue.clone()
    query, key = clips(1, 4), clips(2, 4)
    m(query, key)
    first = torch.cat([m.embed_key(key), m.embed_key(query)])  # k then k2, as enqueued
    assert torch.allclose(m.queue[:8], first, atol=1e-6)
    assert torch.equal(m.queue[8:], before[8:]) and int(m.queue_ptr) == 8
    query, key = clips(3, 4), clips(4, 4)
    m(query, key)
    second = torch.cat([m.embed_key(key), m.embed_key(query)])
    assert torch.allclose(m.queue[8:], second[:4], atol=1e-6)
    assert torch.allclose(m.queue[:4], second[4:], atol=1e-6)
    assert torch.allclose(m.queue[4:8], first[4:], atol=1e-6) and int(m.queue_ptr) == 4


def test_queue_smaller_than_a_step_of_keys_names_the_numbers():
    check_queue(16, 4, 2, symmetric=True)
    check_queue(8, 8, 1, symmetric=False)
    with pytest.raises(ValueError, match=r"4 x 2 x 2 = 16, got 15"):
        check_queue(15, 4, 2, symmetric=True)
    with pytest.raises(ValueError, match=r"4 x 1 x 2 = 8, got 6"):
        moco(queue_size=6)(clips(1), clips(2))
    moco(queue_size=6, symmetric=False)(clips(1), clips(2))


# Split-BN


@pytest.mark.parametrize(("batch", "splits", "groups"), [(8, 4, 4), (8, 3, 2), (6, 4, 3), (7, 4, 1), (1, 4, 1)])
def test_split_bn_trains_each_group_as_its_own_batch_norm(batch, splits, groups):
    assert split_groups(batch, splits) == groups
    plain = bn()
    split = split_batchnorm(copy.deepcopy(plain), splits)
    assert isinstance(split, SplitBatchNorm3d)
    x = torch.randn(batch, 3, 2, 3, 3, generator=torch.Generator().manual_seed(2)) * 3 + 1
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = split(x)
    (out * weights).sum().backward()
    alone = [copy.deepcopy(plain) for _ in range(groups)]
    expected = torch.cat([layer(part) for layer, part in zip(alone, x.chunk(groups), strict=True)])
    (expected * weights).sum().backward()
    assert torch.allclose(out, expected, atol=1e-5)
    for name in ("running_mean", "running_var"):
        tracked = torch.stack([getattr(layer, name) for layer in alone]).mean(0)
        assert torch.allclose(getattr(split, name), tracked, atol=1e-6), name
    for name in ("weight", "bias"):
        grads = torch.stack([getattr(layer, name).grad for layer in alone]).sum(0)
        assert torch.allclose(getattr(split, name).grad, grads, atol=1e-4), name
    assert int(split.num_batches_tracked) == 1


def test_split_bn_evaluates_and_loads_as_plain_batch_norm():
    plain = bn().eval()
    split = SplitBatchNorm3d(3, splits=4).eval()
    split.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 2, 3, 3)
    assert torch.equal(split(x), plain(x))
    fresh = nn.BatchNorm3d(3)
    fresh.load_state_dict(split.state_dict())
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in split.state_dict().items()}

    net = small().eval()
    reference = net(clips(1))
    keys = net.state_dict().keys()
    count = sum(isinstance(mod, nn.BatchNorm3d) for mod in net.modules())
    shared = net.stem[1].weight
    split_batchnorm(net, 4)
    assert sum(isinstance(mod, SplitBatchNorm3d) for mod in net.modules()) == count
    assert net.stem[1].weight is shared and net.state_dict().keys() == keys
    assert torch.equal(net(clips(1)), reference)
    small().load_state_dict(net.state_dict())


# Shuffle-BN in one process


def key_encoder_inputs(model: MoCo) -> list[torch.Tensor]:
    """The batches the key encoder's backbone is given, in call order (key view first)."""
    seen: list[torch.Tensor] = []
    model.encoder_k[0].stem.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    return seen


def row_order(shuffled: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """order[p] = the index in `original` of row p of `shuffled`."""
    same = (shuffled.flatten(1)[:, None] == original.flatten(1)[None]).all(-1)
    assert (same.sum(1) == 1).all(), "not a permutation of the rows"
    return same.int().argmax(1)


@pytest.mark.parametrize("splits", [1, 4])
def test_shuffled_keys_come_back_in_batch_order(splits):
    # With the key encoder in eval mode a key depends on its clip alone, so only the order can differ.
    query, key, partner = clips(1, 8), clips(2, 8), clips(3, 8)
    results = []
    for shuffle in (False, True):
        m = moco(bn_splits=splits, shuffle_bn=shuffle)
        m.encoder_k.eval()
        seen = key_encoder_inputs(m)
        torch.manual_seed(5)
        logits, _, (_, k_map) = m(query, key, partner, block=1)
        results.append((logits, k_map, m.queue[:16].clone()))
    (logits, k_map, queue), (logits_s, k_map_s, queue_s) = results
    order = row_order(seen[0], key)
    assert not torch.equal(order, torch.arange(8)), "the key encoder saw the batch unshuffled"
    assert torch.allclose(queue_s, queue, atol=1e-5)  # k and k2
    assert torch.allclose(logits_s, logits, atol=1e-4)  # the positive, the semi-negative (extra_neg) and the queue
    assert torch.allclose(k_map_s, k_map, atol=1e-5)


def test_shuffled_keys_are_normalised_in_other_groups_than_their_queries():
    m = moco(bn_splits=4, shuffle_bn=True)  # 8 clips, 4 groups of 2
    query, key = clips(1, 8), clips(2, 8)
    seen = key_encoder_inputs(m)
    torch.manual_seed(5)
    m(query, key)
    order = row_order(seen[0], key)
    position = torch.argsort(order)  # where clip i sat in the key encoder's batch
    moved = (position // 2 != torch.arange(8) // 2).float().mean()
    assert moved >= 0.5, f"only {moved:.0%} of the keys left their query's BN group"
    in_order = m._encode(m.encoder_k, key, None)[0]
    shuffled = m._encode(m.encoder_k, seen[0], None)[0]
    assert torch.allclose(m.queue[:8], shuffled[position], atol=1e-5)
    assert not torch.allclose(m.queue[:8], in_order, atol=1e-3), "the BN groups made no difference to the keys"


# Two gloo ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        result = {}
        for shuffle in (False, True):
            m = moco(bn_splits=2, shuffle_bn=shuffle)  # the same weights on both ranks
            m.encoder_k.eval()  # a key depends on its clip alone: computable without the other rank
            torch.manual_seed(100 + rank)  # the ranks draw different permutations unless rank 0's is broadcast
            query, key = clips(10 + rank), clips(20 + rank)
            m(query, key)
            result[shuffle] = (m.queue.clone(), int(m.queue_ptr), torch.cat([m.embed_key(key), m.embed_key(query)]))
        x = torch.arange(B)[:, None].float() + B * rank  # global clip ids
        share, inverse = shuffle_batch(x)
        result["share"], result["back"] = share, unshuffle_batch(share * 10, inverse)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_rank_enqueues_the_keys_of_both_ranks_each_its_own(ranks, shuffle):
    steps = torch.cat([ranks[r][shuffle][2] for r in range(2)])  # rank 0's k, k2, then rank 1's
    for r in range(2):
        queue, ptr, _ = ranks[r][shuffle]
        assert ptr == 2 * B * 2
        assert torch.allclose(queue[: 2 * B * 2], steps, atol=1e-5), f"rank {r}"


def test_ddp_shuffle_shares_one_permutation_and_gives_each_rank_back_its_own(ranks):
    shares = [ranks[r]["share"].flatten() for r in range(2)]
    assert torch.equal(torch.cat(shares).sort().values, torch.arange(2 * B).float())
    assert any((share // B != r).any() for r, share in enumerate(shares)), "no clip moved to the other rank"
    for r in range(2):
        assert torch.equal(ranks[r]["back"].flatten(), (torch.arange(B) + B * r).float() * 10)


# Still negatives


def test_still_negatives_are_both_views_frozen_at_their_middle_frame_and_add_two_columns():
    query, key = clips(1), clips(2)
    columns = {}
    for on in (False, True):
        m = moco(symmetric=False)
        seen = key_encoder_inputs(m)
        config = TrainConfig(backbone="small", queue_size=32, dim=8, still_negatives=on)
        compute_loss(m, {"query": query, "key": key}, config)
        columns[on] = len(seen)
        if on:
            middle = query.shape[2] // 2
            for frozen, clip in zip(seen[1:], (query, key), strict=True):
                assert torch.equal(frozen, clip[:, :, middle : middle + 1].expand_as(clip))
    assert columns == {False: 1, True: 3}  # the key, then the frozen query and the frozen key
