"""scripts/aot_compile.py: TPU slice names, the fit verdict, and a real compile for a TPU slice.

The compile needs libtpu (requirements-tpu.txt), which CI does not install: that test is skipped
there. Everything else runs anywhere.
"""

import os
import re
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPT = os.path.join(ROOT, "scripts", "aot_compile.py")
aot = runpy.run_path(SCRIPT)
GiB = 2**30


@pytest.mark.parametrize("name, topology, chips", [
    ("v5p-8", "v5p:2x2x1", 4),  # v4 and v5p names count TensorCores, two per chip
    ("v5p-64", "v5p:2x4x4", 32),
    ("v5p-128", "v5p:4x4x4", 64),
    ("v4-8", "v4:2x2x1", 4),
    ("v4-32", "v4:2x2x4", 16),
    ("v4-256", "v4:4x4x8", 128),
    ("v5e-1", "v5e:1x1", 1),  # v5e and v6e names count chips
    ("v5e-4", "v5e:2x2", 4),
    ("v5e-16", "v5e:4x4", 16),
    ("v5litepod-32", "v5e:4x8", 32),  # gcloud's accelerator type for v5e
    ("v6e-8", "v6e:2x4", 8),
    ("v6e-256", "v6e:16x16", 256),
    ("v5p:4x4x8", "v5p:4x4x8", 128),  # an explicit topology passes through
])
def test_slice_names_map_to_libtpu_topologies(name, topology, chips):
  tpu = aot["parse_slice"](name)
  assert (tpu.topology, tpu.chips) == (topology, chips)


def test_slices_know_their_chips_memory_and_gcloud_name():
  hbm = {name: aot["parse_slice"](name).hbm_bytes // GiB
         for name in ("v4-8", "v5e-4", "v5p-8", "v6e-4")}
  assert hbm == {"v4-8": 32, "v5e-4": 16, "v5p-8": 95, "v6e-4": 32}
  assert aot["parse_slice"]("v5e:4x4").accelerator_type == "v5litepod-16"
  assert aot["parse_slice"]("v5p:2x4x4").accelerator_type == "v5p-64"
  # A v4/v5p chip is one JAX device (megacore); a slice below one host says its own bounds.
  assert aot["parse_slice"]("v4-8").topology_options() == {"chip_config_name": "megacore"}
  assert aot["parse_slice"]("v5e-1").topology_options() == {"chips_per_host_bounds": (1, 1, 1)}
  assert aot["parse_slice"]("v5e-16").topology_options() == {}


@pytest.mark.parametrize("name", [
    "v7-8",  # unknown generation
    "v5p-63", "v5p-6",  # not whole chips of a power-of-two slice
    "v4-4",  # 2 chips: less than one v4 host
    "v5e-12",  # not a power of two
    "v5e-512",  # more than a v5e pod
    "v5e:4x4x4",  # v5e is a 2D torus
    "v5p:2x4",  # v5p is a 3D torus
    "tpu", "", "v5p-", "V5P-64 ",
])
def test_bad_slice_names_are_refused_with_the_valid_forms(name):
  with pytest.raises(aot["BadSliceName"], match=r"v5e-N|at most"):
    aot["parse_slice"](name)


def test_verdict_compares_with_the_chips_memory():
  v5e = aot["parse_slice"]("v5e-16")  # 16 GiB per chip
  assert aot["verdict"](12 * GiB, v5e).startswith("fits: 12.00 GiB of 16 GiB")
  assert "4.00 GiB (25%) to spare" in aot["verdict"](12 * GiB, v5e)
  assert aot["verdict"](17 * GiB, v5e).startswith("does not fit: 17.00 GiB")
  assert aot["verdict"](17 * GiB, aot["parse_slice"]("v5p-8")).startswith("fits")


def test_collectives_are_counted_once_per_instruction():
  hlo = """
  %ag = bf16[8,128]{1,0} all-gather(bf16[2,128]{1,0} %p), dimensions={0}
  %ars = (f32[4]{0}, f32[4]{0}) all-reduce-start(f32[4]{0} %x), to_apply=%add
  %ard = f32[4]{0} all-reduce-done((f32[4]{0}, f32[4]{0}) %ars)
  %rs = f32[1]{0} reduce-scatter(f32[4]{0} %y), dimensions={0}
  %cp = f32[4]{0} collective-permute(f32[4]{0} %z), source_target_pairs={{0,1}}
  %all-gather.1 = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)
  """
  assert aot["count_collectives"](hlo) == {
      "all-reduce": 1, "all-gather": 1, "reduce-scatter": 1, "all-to-all": 0,
      "collective-permute": 1}


def run_script(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def test_a_bad_topology_is_one_line_that_lists_the_valid_forms():
  result = run_script("--config=configs/llama.py:tiny", "--topology=v5p-63")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --topology='v5p-63' is not a TPU slice; {aot['VALID_FORMS']}"]


def test_a_tiny_llama_compiles_for_a_v5e_slice_and_fits():
  pytest.importorskip("libtpu", reason="the TPU compiler: pip install -r requirements-tpu.txt")
  result = run_script("--config=configs/llama.py:tiny", "--topology=v5e-4",
                      "--config.model.num_layers=2", "--config.seq_len=64",
                      "--config.batch_size=8", "--config.mesh.fsdp=2")
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in out
  memory = dict(re.findall(r"(arguments|temporaries|outputs|total) ([\d.]+) [MG]iB", out))
  assert set(memory) == {"arguments", "temporaries", "outputs", "total"}
  assert float(memory["arguments"]) > 0 and float(memory["total"]) > 0
  flops = re.search(r"XLA's cost analysis ([\d.e+]+) per device", out)
  assert flops and float(flops[1]) > 0
  # Gradients of data- and FSDP-sharded parameters must be combined across devices.
  collectives = dict(re.findall(r"([a-z-]+) (\d+)", out.split("collectives: ")[1].splitlines()[0]))
  assert int(collectives["all-reduce"]) + int(collectives["reduce-scatter"]) > 0
  assert re.search(r"^verdict: fits: .* of 16 GiB HBM per v5e chip", out, re.M)
