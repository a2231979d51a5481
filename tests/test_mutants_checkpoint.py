"""Checkpoint folders and family bookkeeping, pinned where mutation testing found them open
(bench/results/mutants.md): the exact refusal of each kind of bad manifest, what a save writes
and leaves on disk, optimizer state round trips, and the block rankings, ranks and concatenated
inputs of a family. Small models only; public APIs except the registry clean-up."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

import onefit
from onefit.checkpoint import CheckpointError, load_training_state, read_manifest, save_family
from onefit.cost import LatencyModel
from onefit.space import Dimension, Space


def small_family():
    torch.manual_seed(0)
    return onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))


# -- a tiny decoder: a ModuleList of Llama-layout blocks with grouped-query attention ------------
class Attention(nn.Module):
    def __init__(self, dim=16, heads=4, kv=2, head_dim=4):
        super().__init__()
        self.head_dim, self.num_key_value_groups = head_dim, heads // kv
        self.q_proj, self.k_proj = nn.Linear(dim, heads * head_dim), nn.Linear(dim, kv * head_dim)
        self.v_proj, self.o_proj = nn.Linear(dim, kv * head_dim), nn.Linear(heads * head_dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2).repeat_interleave(self.num_key_value_groups, 1)
                for p in (self.k_proj, self.v_proj))
        y = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim ** 0.5, -1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, dim=16, ffn=8):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(dim, ffn), nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x):
        return self.down_proj(torch.relu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = Attention(), Mlp()

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class Decoder(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(depth))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def decoder_family(config=None):
    torch.manual_seed(0)
    return onefit.elasticize(Decoder(), (torch.randn(1, 5, 16),), config)


# -- read_manifest: each kind of bad manifest, refused with its own message --------------------
def v1_manifest(**changes) -> dict:
    """A version 1 manifest (no hash of its own), well formed unless ``changes`` say otherwise."""
    manifest = {"format": "onefit-family", "version": 1, "config": {}, "space": [], "example_inputs": [],
                "weights": {"file": "weights-0123456789abcdef.safetensors", "sha256": "0" * 64}}
    manifest.update(changes)
    return {k: v for k, v in manifest.items() if v is not ...}


def refusal(folder, content) -> str:
    (folder / "family.json").write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(CheckpointError) as err:
        read_manifest(folder)
    return str(err.value)


def test_a_well_formed_version_1_manifest_is_read_as_it_is(tmp_path):
    manifest = v1_manifest(optimizer={"file": "optimizer-0123456789abcdef.safetensors", "sha256": "1"},
                           progress={"epoch": 2})
    (tmp_path / "family.json").write_text(json.dumps(manifest))
    assert read_manifest(tmp_path) == manifest


def test_a_manifest_that_is_not_utf8_names_the_byte_and_says_the_checkpoint_is_damaged(tmp_path):
    path = tmp_path / "family.json"
    assert refusal(tmp_path, b"\xff\xfe{}") == (f"{path} is not UTF-8 text (invalid start byte at byte 0); "
                                                "the checkpoint is damaged")


@pytest.mark.parametrize("fmt, version, shown", [
    ("other-format", 2, "'other-format' v2"),  # a right version does not save a wrong format
    ("onefit-family", 3, "'onefit-family' v3"),  # an int version that is not one of those read
    ("onefit-family", "2", "'onefit-family' v2"),  # a version must be an int, not a string
    (None, None, "None vNone"),
])
def test_a_manifest_with_a_bad_format_or_version_names_both_and_the_versions_allowed(tmp_path, fmt, version, shown):
    manifest = {"format": fmt, "version": version, "sha256": "0" * 64}
    assert refusal(tmp_path, {k: v for k, v in manifest.items() if v is not None}) == (
        f"{tmp_path / 'family.json'}: format {shown} is not 'onefit-family' (versions 1, 2)")


def test_a_manifest_of_the_wrong_shape_lists_every_wrong_entry_and_what_is_expected(tmp_path):
    manifest = v1_manifest(config=[], space=..., history="edited", source=None,
                           optimizer={"file": "optimizer-0123456789abcdef.safetensors", "sha256": "0"})
    assert refusal(tmp_path, manifest) == (
        f"{tmp_path / 'family.json'}: not a family manifest: 'config' (list), 'space' (missing), 'history' (str), "
        "'progress' (needs an int 'epoch' beside the optimizer state); expected 'format' (str), 'version' (int), "
        "'config' (dict), 'space' (list), 'example_inputs' (list), 'weights' (dict)")


@pytest.mark.parametrize("progress", [{"epoch": "3"}, {"step": 3}, {"epoch": 2.0}])
def test_optimizer_state_needs_a_progress_record_with_an_int_epoch(tmp_path, progress):
    manifest = v1_manifest(optimizer={"file": "optimizer-0123456789abcdef.safetensors", "sha256": "0"},
                           progress=progress)
    assert refusal(tmp_path, manifest) == (
        f"{tmp_path / 'family.json'}: not a family manifest: 'progress' (needs an int 'epoch' beside the optimizer "
        "state); expected 'format' (str), 'version' (int), 'config' (dict), 'space' (list), 'example_inputs' (list), "
        "'weights' (dict)")


@pytest.mark.parametrize("entry", [{"file": 3, "sha256": "0"}, {"sha256": "0"}, {"file": "w.safetensors"}])
def test_a_tensor_entry_without_file_and_sha256_strings_is_refused_showing_the_entry(tmp_path, entry):
    assert refusal(tmp_path, v1_manifest(weights=entry)) == (
        f"{tmp_path / 'family.json'}: a tensor entry needs 'file' and 'sha256' strings, got {entry!r}")


@pytest.mark.parametrize("name", ["sub/weights.safetensors", ".weights.safetensors", "../weights.safetensors"])
@pytest.mark.parametrize("entry", ["weights", "optimizer"])
def test_a_tensor_file_outside_the_folder_or_hidden_is_refused(tmp_path, name, entry):
    tensors = {"file": name, "sha256": "0"}
    manifest = v1_manifest(**({"weights": tensors} if entry == "weights" else
                              {"optimizer": tensors, "progress": {"epoch": 1}}))
    assert refusal(tmp_path, manifest) == (
        f"{tmp_path / 'family.json'}: the tensor file {name!r} is not a plain file name inside the folder")


# -- the manifest's own hash ---------------------------------------------------------------------
def test_the_recorded_sha256_is_that_of_the_canonical_json_of_the_rest_so_key_order_does_not_matter(tmp_path):
    small_family().save(tmp_path)
    manifest = json.loads((tmp_path / "family.json").read_text())
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["sha256"] == hashlib.sha256(canonical).hexdigest()  # anyone can check it without onefit
    reordered = dict(reversed(list(manifest.items())))  # rewritten by a tool that orders keys otherwise
    (tmp_path / "family.json").write_text(json.dumps(reordered, indent=4))
    assert read_manifest(tmp_path) == manifest


# -- what a save writes and leaves -----------------------------------------------------------------
def test_a_save_creates_missing_parent_folders_and_names_the_weights_by_their_hash(tmp_path):
    folder = tmp_path / "runs" / "today" / "fam"
    small_family().save(folder)
    manifest = json.loads((folder / "family.json").read_text())
    digest = hashlib.sha256((folder / manifest["weights"]["file"]).read_bytes()).hexdigest()
    assert manifest["weights"] == {"file": f"weights-{digest[:16]}.safetensors", "sha256": digest}
    assert sorted(p.name for p in folder.iterdir()) == ["family.json", f"weights-{digest[:16]}.safetensors"]


def test_the_manifest_is_written_one_entry_per_line(tmp_path):
    small_family().save(tmp_path)
    lines = (tmp_path / "family.json").read_text().splitlines()
    assert lines[:3] == ["{", ' "format": "onefit-family",', ' "version": 2,']


def test_a_save_removes_scratch_files_and_weights_no_manifest_names_and_keeps_other_files(tmp_path):
    family = small_family()
    family.save(tmp_path)
    first = json.loads((tmp_path / "family.json").read_text())["weights"]["file"]
    (tmp_path / ".family.json.k2j4x9").write_text("{half a manifest")  # left by a save killed mid-write
    (tmp_path / ".weights-00.safetensors.a8f3").write_bytes(b"half")
    (tmp_path / "old-0000000000000000.safetensors").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("mine")
    with torch.no_grad():
        next(family.parameters()).add_(1.0)
    family.save(tmp_path)
    second = json.loads((tmp_path / "family.json").read_text())["weights"]["file"]
    assert second != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["family.json", second, "notes.txt"])


def test_space_history_and_latency_models_are_saved_and_come_back(tmp_path):
    family = small_family()
    dims = list(family.space)
    family.restrict_(Space([Dimension(dims[0].name, dims[0].kind, dims[0].choices[1:]), *dims[1:]]), by="test")
    latency = LatencyModel("cpu", 1, 0.5, [], (), [])
    family.latency_models["cpu-b1"] = latency
    family.save(tmp_path)
    manifest = json.loads((tmp_path / "family.json").read_text())
    assert manifest["space_history"] == family.space_history == [
        {"by": "test", "choices": {dims[0].name: list(dims[0].choices[1:])}}]
    assert manifest["latency_models"] == {"cpu-b1": {"backend": "cpu", "batch": 1, "intercept": 0.5, "coef": [],
                                                  "features": [], "scale": [], "fit_error": {}}}
    loaded = onefit.load(tmp_path)
    assert loaded.space_history == family.space_history and loaded.space == family.space
    assert loaded.latency_models == {"cpu-b1": latency}


# -- optimizer state ----------------------------------------------------------------------------------
class CountingSGD(torch.optim.Optimizer):
    """SGD with a momentum buffer and a plain int step count, under keys with slashes in them."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["steps"] = state.get("steps", 0) + 1
                buf = state.setdefault("momentum/buffer", torch.zeros_like(p))
                buf.mul_(0.9).add_(p.grad)
                p.sub_(group["lr"] * buf)


def test_optimizer_state_with_plain_values_and_slashed_keys_resumes_exactly(tmp_path):
    family = small_family()
    optimizer = CountingSGD(family.parameters())
    for _ in range(3):
        optimizer.zero_grad()
        family(torch.randn(4, 1, 8, 8)).sum().backward()
        optimizer.step()
    save_family(family, tmp_path, optimizer, {"epoch": 3})
    manifest = json.loads((tmp_path / "family.json").read_text())
    digest = hashlib.sha256((tmp_path / manifest["optimizer"]["file"]).read_bytes()).hexdigest()
    assert manifest["optimizer"]["file"] == f"optimizer-{digest[:16]}.safetensors"
    assert manifest["optimizer"]["sha256"] == digest and manifest["progress"] == {"epoch": 3}

    fresh = CountingSGD(small_family().parameters())
    assert load_training_state(tmp_path, fresh) == {"epoch": 3}
    before, after = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert sorted(after) == sorted(before)
    for idx in before:
        assert after[idx]["steps"] == 3
        assert torch.equal(after[idx]["momentum/buffer"], before[idx]["momentum/buffer"])


# -- Family.save ------------------------------------------------------------------------------------
def test_a_family_with_adapters_attached_refuses_to_save_and_says_how(tmp_path):
    family = small_family()
    adapters = onefit.adapt(family, ranks=(2, 4))
    with pytest.raises(ValueError) as err:
        family.save(tmp_path)
    assert str(err.value) == ("the family has adapters attached: save them with adapters.save(path), and the family "
                              "itself after adapters.detach_()")
    assert not (tmp_path / "family.json").exists()
    adapters.detach_()
    family.save(tmp_path)
    assert (tmp_path / "family.json").exists()


# -- Family.rank_blocks_ ------------------------------------------------------------------------------
def test_ranked_blocks_decide_which_blocks_a_depth_runs_and_are_saved(tmp_path):
    family = decoder_family()
    family.rank_blocks_({"layers": torch.tensor([2, 0, 1])})  # as order_depth_ computes it: a tensor
    assert family.depth_order == {"layers": [2, 0, 1]} and all(type(i) is int for i in family.depth_order["layers"])
    one, two = {"depth:layers": 1}, {"depth:layers": 2}
    assert family.skipped(one) == ("layers.0.", "layers.1.") and family.skipped(two) == ("layers.1.",)
    x = torch.randn(2, 5, 16)
    model = family.module
    with torch.no_grad(), family.activate(one):
        expected = model.head(model.layers[2](x))
        assert torch.allclose(family(x), expected)
        assert torch.allclose(family.extract(one)(x), expected)
    family.save(tmp_path)
    assert json.loads((tmp_path / "family.json").read_text())["depth_order"] == {"layers": [2, 0, 1]}
    assert onefit.load(tmp_path, model=Decoder()).skipped(one) == ("layers.0.", "layers.1.")


def test_ranking_something_that_is_not_a_block_list_names_the_block_lists(tmp_path):
    family = decoder_family()
    for name in ("blocks", "head"):
        with pytest.raises(ValueError) as err:
            family.rank_blocks_({name: [0, 1, 2]})
        assert str(err.value) == (f"rank_blocks_: {name!r} is not a depth stage whose blocks can be ranked; those "
                                  "are ['layers']")
    assert family.depth_order == {}


@pytest.mark.parametrize("ranking", [[0, 1, 1], [0, 1], [1, 2, 3], [0, 1, 2, 3]])
def test_a_ranking_that_is_not_a_permutation_of_the_blocks_is_refused_and_changes_nothing(ranking):
    family = decoder_family()
    with pytest.raises(ValueError) as err:
        family.rank_blocks_({"layers": ranking})
    assert str(err.value) == (f"rank_blocks_: the ranking of 'layers' must order its 3 blocks 0..2, each once; "
                              f"got {ranking}")
    assert family.depth_order == {} and family.skipped({"depth:layers": 1}) == ("layers.1.", "layers.2.")


# -- ranks and concatenated inputs ----------------------------------------------------------------------
def test_ranks_are_the_rank_choices_of_the_factorized_layers():
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(rank=(0.5, 1.0)))
    assert family.factorized == ["1", "4"]
    low = {name: min(family.space[f"rank:{name}"].choices) for name in family.factorized}
    assert family.ranks(family.space.complete({"rank:1": low["1"]})) == {
        "1": low["1"], "4": max(family.space["rank:4"].choices)}


def test_dropping_key_value_heads_drops_their_query_heads_from_the_output_projection():
    family = decoder_family(onefit.ElasticConfig(kv_heads=(0.5, 1.0)))
    arch = family.space.complete({"kv:layers.0.self_attn": 1})  # one of two key/value heads, each with 2 queries
    sizes = family.layer_sizes(arch)
    assert sizes["layers.0.self_attn.o_proj"] == (8, 16) and sizes["layers.1.self_attn.o_proj"] == (16, 16)
    sub = family.extract(arch)
    assert sub.layers[0].self_attn.o_proj.in_features == 8
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(sub(x), family(x), atol=1e-6)


class Concat(nn.Module):
    """A layer reading the input itself (a fixed width) beside a layer's output (an elastic width)."""

    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Linear(4, 6), nn.Linear(4 + 6, 2)

    def forward(self, x):
        return self.fc(torch.cat([x, torch.relu(self.a(x))], 1))


def test_a_layer_reading_a_concatenation_keeps_its_fixed_part_and_the_kept_channels():
    torch.manual_seed(0)
    family = onefit.elasticize(Concat(), (torch.randn(2, 4),))
    arch = {"width:a": 2}
    assert family.layer_sizes(arch) == {"a": (4, 2), "fc": (6, 2)}
    sub = family.extract(arch)
    assert torch.equal(sub.fc.weight, family.module.fc.weight[:, [0, 1, 2, 3, 4, 5]])
    x = torch.randn(3, 4)
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(sub(x), family(x))


# -- Family.idle and a kind of the user's own ---------------------------------------------------------------
def test_a_registered_kind_is_asked_which_of_its_dimensions_the_arch_leaves_idle():
    from onefit import space as space_module
    from onefit.dims import KINDS, Kind, register_kind

    seen = []

    class Watcher(Kind):
        names = ("mutant_watcher",)

        def idle(self, family, arch, gone):
            seen.append(dict(arch))
            return set()

    before = list(space_module.KINDS)
    register_kind(Watcher)
    try:
        family = decoder_family()
        assert family.idle({"depth:layers": 1}) == {"heads:layers.1.self_attn", "width:layers.1.mlp.gate_proj",
                                                     "heads:layers.2.self_attn", "width:layers.2.mlp.gate_proj"}
    finally:
        KINDS.pop("mutant_watcher", None)
        space_module.KINDS[:] = before
    assert seen == [{"depth:layers": 1}]  # the arch asked about, as the built-in kinds get it
