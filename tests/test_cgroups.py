"""The memory and CPU a cgroup gives the process, at every level, v1 and v2 (:mod:`densepred.cgroups`).

Each hierarchy is written in a temporary folder as the kernel shows it: ``/proc/self/cgroup``,
the cgroup mounts of ``/proc/self/mountinfo`` and the control files. The layouts are those of
Slurm (a job's limit on the job's group, the task in a group below it), Docker and Kubernetes
(the container's own part of the hierarchy mounted at the root), and systemd.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from densepred.cgroups import cpu_quota, groups, memory_room, quota_cores

GiB = 2**30


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text + "\n")


def proc_files(tmp_path: Path, cgroup: str, mounts: list[str]) -> tuple[str, str]:
    (tmp_path / "cgroup").write_text(cgroup)
    (tmp_path / "mountinfo").write_text("".join(f"{30 + i} 23 0:{40 + i} {m}\n" for i, m in enumerate(mounts)))
    return str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")


def v1_mounts(root: Path, mount_root: str = "/") -> list[str]:
    return [f"/ {root} rw - tmpfs tmpfs rw",
            f"{mount_root} {root / 'memory'} rw,relatime - cgroup cgroup rw,memory",
            f"{mount_root} {root / 'cpu,cpuacct'} rw,relatime - cgroup cgroup rw,cpu,cpuacct",
            f"{mount_root} {root / 'unified'} rw,relatime - cgroup2 cgroup2 rw"]


def test_a_slurm_v1_jobs_limit_above_the_tasks_group_bounds_the_room(tmp_path):
    """Found with a real v1 hierarchy: a 4 GiB limit on the job's group, the process in a
    group below it: densepred saw 22.7 GiB, planned for it and was killed by the kernel."""
    root = tmp_path / "fs"
    job = root / "memory" / "slurm" / "uid_1000" / "job_42"
    write(job, memory__limit_in_bytes=str(4 * GiB), memory__usage_in_bytes=str(GiB),
          memory__stat=f"cache 100\ntotal_inactive_file {GiB // 4}\n")
    write(job / "step_0" / "task_0", memory__limit_in_bytes=str(2**63 - 4096), memory__usage_in_bytes="100")
    write(root / "memory", memory__limit_in_bytes=str(2**63 - 4096))
    write(root / "cpu,cpuacct" / "slurm" / "uid_1000" / "job_42", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    files = proc_files(tmp_path, "11:memory:/slurm/uid_1000/job_42/step_0/task_0\n"
                                 "4:cpu,cpuacct:/slurm/uid_1000/job_42\n0::/\n", v1_mounts(root))
    assert memory_room(*files) == 4 * GiB - (GiB - GiB // 4)  # inactive file pages can be dropped
    assert cpu_quota(*files) is None


def test_a_v2_limit_on_a_parent_group_bounds_the_room_and_the_least_room_wins(tmp_path):
    root = tmp_path / "fs"
    job = root / "system.slice" / "slurmstepd.scope" / "job_7"
    write(job, memory__max=str(8 * GiB), memory__current=str(7 * GiB), memory__stat="anon 5\ninactive_file 0\n")
    write(job / "step_batch" / "user" / "task_0", memory__max="max", memory__current=str(GiB))
    write(root / "system.slice", memory__max=str(64 * GiB), memory__current=str(10 * GiB))
    files = proc_files(tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_batch/user/task_0\n",
                       [f"/ {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"])
    assert [g.folder for g in groups("memory", *files)][:2] == [job / "step_batch" / "user" / "task_0",
                                                                 job / "step_batch" / "user"]
    assert memory_room(*files) == GiB  # the job's 1 GiB left, not the slice's 54


def test_a_containers_cpu_quota_is_read_at_its_mounted_root(tmp_path):
    """Docker and Kubernetes with a cgroup namespace: the process is at ``/``, its limits at the
    mount's root; without a namespace (v1), the root mounted is the container's own group."""
    root = tmp_path / "fs"
    write(root, cpu__max="250000 100000", memory__max=str(3 * GiB), memory__current=str(GiB))
    files = proc_files(tmp_path, "0::/\n", [f"/ {root} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(*files) == pytest.approx(2.5)
    assert quota_cores(*files) == 2  # rounded down: a third thread would be stopped each period
    assert memory_room(*files) == 2 * GiB

    v1 = tmp_path / "v1"
    write(v1 / "cpu,cpuacct", cpu__cfs_quota_us="50000", cpu__cfs_period_us="100000")
    files = proc_files(tmp_path / "v1", "4:cpu,cpuacct:/docker/0123abc\n",
                       v1_mounts(v1, mount_root="/docker/0123abc"))
    assert cpu_quota(*files) == pytest.approx(0.5)
    assert quota_cores(*files) == 1  # at least one


def test_the_least_quota_of_the_levels_counts_and_max_means_none(tmp_path):
    root = tmp_path / "fs"
    write(root / "kubepods.slice", cpu__max="400000 100000")
    write(root / "kubepods.slice" / "pod1", cpu__max="max 100000")
    write(root / "kubepods.slice" / "pod1" / "ctr", cpu__max="max 100000")
    files = proc_files(tmp_path, "0::/kubepods.slice/pod1/ctr\n", [f"/ {root} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(*files) == pytest.approx(4.0)
    (root / "kubepods.slice" / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(*files) is None


def test_mount_points_with_escaped_spaces_and_missing_or_garbled_files_are_no_limit(tmp_path):
    root = tmp_path / "with space"
    write(root / "grp", memory__max=str(GiB), memory__current="0")
    files = proc_files(tmp_path, "0::/grp\n", [f"/ {str(root).replace(' ', chr(92) + '040')} rw - cgroup2 cgroup2 rw"])
    assert memory_room(*files) == GiB
    (root / "grp" / "memory.max").write_text("garbage\n")
    assert memory_room(*files) is None
    (tmp_path / "none").mkdir()
    nothing = proc_files(tmp_path / "none", "", [])
    assert memory_room(*nothing) is None
    assert cpu_quota(*nothing) is None
    assert memory_room(str(tmp_path / "missing"), str(tmp_path / "missing")) is None


def test_a_group_named_like_the_mounted_root_but_beside_it_is_read_at_the_root(tmp_path):
    root = tmp_path / "fs"
    write(root, memory__limit_in_bytes=str(GiB), memory__usage_in_bytes="0")
    files = proc_files(tmp_path, "9:memory:/docker/abcdef\n",
                       [f"/docker/abc {root} rw - cgroup cgroup rw,memory"])
    assert [g.folder for g in groups("memory", *files)] == [root]
    assert memory_room(*files) == GiB
    files = proc_files(tmp_path, "0::/../../other\n", [f"/ {root} rw - cgroup2 cgroup2 rw"])
    assert [g.folder for g in groups("memory", *files)] == [root]  # outside the namespace: its root


@pytest.fixture
def torch_threads(monkeypatch):
    """torch's thread count and OMP_NUM_THREADS put back after the test."""
    import torch

    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield torch
    torch.set_num_threads(threads)


def test_the_command_line_runs_as_many_threads_as_the_quota_keeps_busy_unless_told(torch_threads, monkeypatch):
    import os

    from densepred.networks import devices

    torch_threads.set_num_threads(2)
    monkeypatch.setattr(devices, "available_cores", lambda: 1)
    assert devices.fit_cpu_threads() == 1
    assert torch_threads.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"  # and the processes it starts
    torch_threads.set_num_threads(2)
    assert devices.fit_cpu_threads() is None  # OMP_NUM_THREADS given: the user's number
    assert torch_threads.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(devices, "available_cores", lambda: 2)
    assert devices.fit_cpu_threads() is None


def test_a_callers_process_with_more_threads_than_cores_is_told_once_not_changed(torch_threads, monkeypatch, caplog):
    from densepred.networks import devices

    torch_threads.set_num_threads(2)
    monkeypatch.setattr(devices, "available_cores", lambda: 1)
    monkeypatch.setattr(devices, "_threads_checked", False)
    with caplog.at_level("WARNING", logger="densepred"):
        devices.resolve_device("cpu")
        devices.resolve_device("cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "torch runs 2 CPU threads, but this process may keep only 1 core busy" in warnings[0]
    assert "torch.set_num_threads(1)" in warnings[0]
    assert torch_threads.get_num_threads() == 2
