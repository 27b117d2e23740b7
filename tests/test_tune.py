"""Fine-tune jobs (issue 12 item 1): `tune`, `jobs` and `job_cancel` on the tiny model, named `tiny` in a config.

A job trains a LoRA adapter in turns on the device, reports its progress, can be cancelled,
resumes after the kernel is killed, and leaves a whole adapter folder; bad input starts nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest

from harness import KernelProcess, errno_of, raised, wait_until

TUNE_CAPS = ["tune", "ps", "devices", "infer", "models"]
CHAT = [{"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                      {"role": "assistant", "content": f"{i} plus one is {i + 1}."}]} for i in range(6)]
PAIRS = [{"prompt": "The capital of France is", "completion": " Paris."},
         {"prompt": "The capital of Italy is", "completion": " Rome."}]
EXAMPLES = CHAT + PAIRS        # 8: two steps an epoch at batch_size 4
ENDED = ("done", "failed", "cancelled")


def write_config(folder, tiny_llama, extra: str = "") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "llmos.toml"
    path.write_text(f'[models.tiny]\npath = "{tiny_llama}"\n{extra}')
    return str(path)


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("tune-kernel")
    k = KernelProcess(folder, model="tiny", extra=["--config", write_config(folder, tiny_llama)],
                      env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture
def c(tiny_kernel):
    with tiny_kernel.client("tune-test", caps=TUNE_CAPS) as client:
        yield client
        for job in client.jobs()["jobs"]:    # leave no job running for the next test
            if job["state"] not in ENDED:
                client.job_cancel(job=job["job"])
        wait_until(lambda: all(j["state"] in ENDED for j in client.jobs()["jobs"]), 30)


def job_of(c, job_id: str) -> dict:
    return next(j for j in c.jobs()["jobs"] if j["job"] == job_id)


def wait_state(c, job_id: str, states=ENDED, timeout: float = 120) -> dict:
    assert wait_until(lambda: job_of(c, job_id)["state"] in states, timeout), job_of(c, job_id)
    return job_of(c, job_id)


def reserved(c) -> int:
    return sum(d["reserved_bytes"] for d in c.devices())


def adapter_folder(k, name: str, owner: str = "operator"):
    return k.state_dir / "adapters" / owner / "tiny" / name


def test_a_job_reports_progress_then_writes_its_adapter(tiny_kernel, c):
    job = c.tune(base="tiny", name="progress", examples=EXAMPLES, epochs=10, batch_size=4, lr=1e-3)
    assert job["model"] == "tiny:progress" and job["steps"] == 20 and job["state"] == "queued"
    seen = []
    assert wait_until(lambda: seen.append(job_of(c, job["job"])) or seen[-1]["state"] in ENDED, 180)
    midway = [j for j in seen if j["state"] == "running" and 0 < j["step"] < j["steps"]]
    assert midway and all(j["loss"] is not None and j["tokens_per_s"] > 0 for j in midway), seen
    assert seen[-1]["state"] == "done" and seen[-1]["step"] == 20, seen[-1]
    folder = adapter_folder(tiny_kernel, "progress")
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "llmos.json"}
    meta = json.loads((folder / "llmos.json").read_text())
    data = (tiny_kernel.state_dir / "jobs" / job["job"] / "data.jsonl").read_bytes()
    assert meta["base"] == "tiny" and meta["name"] == "progress" and meta["principal"] == "operator"
    assert meta["version"] == 1 and meta["data_sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["hyperparameters"]["rank"] == 8 and meta["hyperparameters"]["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8


def test_a_finished_job_gives_its_memory_back(c):
    before = reserved(c)
    job = c.tune(base="tiny", name="memory", examples=EXAMPLES, epochs=1)
    assert job["reserved_bytes"] > 0
    assert reserved(c) == before + job["reserved_bytes"]
    assert wait_state(c, job["job"])["state"] == "done"
    assert reserved(c) == before


def test_training_the_same_name_again_makes_version_2(tiny_kernel, c):
    for _ in range(2):
        job = c.tune(base="tiny", name="versioned", examples=EXAMPLES, epochs=1)
        assert wait_state(c, job["job"])["state"] == "done"
    meta = json.loads((adapter_folder(tiny_kernel, "versioned") / "llmos.json").read_text())
    assert meta["version"] == 2 and meta["job"] == job["job"]


def test_cancel_ends_the_job_without_an_adapter_and_frees_its_memory(tiny_kernel, c):
    before = reserved(c)
    job = c.tune(base="tiny", name="cancelled", examples=EXAMPLES, epochs=1000)
    wait_state(c, job["job"], ("running",))
    assert c.job_cancel(job=job["job"]) == {"job": job["job"], "was": "running", "cancelled": True}
    assert wait_state(c, job["job"])["state"] == "cancelled"
    assert reserved(c) == before
    assert not adapter_folder(tiny_kernel, "cancelled").exists()


def test_malformed_examples_are_einval_by_number_and_start_nothing(tiny_kernel, c):
    bad = [EXAMPLES[0], {"messages": [{"role": "user", "content": "hi"}]}, EXAMPLES[1], "text",
           {"prompt": "p"}]
    err = raised(c.tune, base="tiny", name="malformed", examples=bad)
    assert err.errno == "EINVAL"
    assert "line 2: no assistant message" in err.message and "line 4: not a JSON object" in err.message
    assert "line 5:" in err.message and "line 1:" not in err.message and "line 3:" not in err.message
    assert not any(j["model"] == "tiny:malformed" for j in c.jobs()["jobs"])
    jobs_dir = tiny_kernel.state_dir / "jobs"
    assert all(json.loads((d / "job.json").read_text())["name"] != "malformed" for d in jobs_dir.iterdir())


def test_an_unknown_base_is_enoent(c):
    assert errno_of(c.tune, base="no-such-model", name="x", examples=EXAMPLES) == "ENOENT"


def test_a_process_without_the_tune_capability_gets_eperm(tiny_kernel):
    with tiny_kernel.client("no-tune") as plain:     # the default caps do not hold tune
        assert errno_of(plain.tune, base="tiny", name="x", examples=EXAMPLES) == "EPERM"
        assert errno_of(plain.job_cancel, job="whatever") == "EPERM"


def test_a_third_job_of_one_principal_is_eagain(c):
    first = c.tune(base="tiny", name="bound1", examples=EXAMPLES, epochs=1000)
    second = c.tune(base="tiny", name="bound2", examples=EXAMPLES, epochs=1000)
    assert errno_of(c.tune, base="tiny", name="bound3", examples=EXAMPLES) == "EAGAIN"
    c.job_cancel(job=first["job"])
    assert wait_state(c, first["job"])["state"] == "cancelled"
    third = c.tune(base="tiny", name="bound3", examples=EXAMPLES, epochs=1000)
    for job in (second, third):
        c.job_cancel(job=job["job"])


def test_a_principal_keeps_its_16_latest_ended_jobs(tiny_kernel, c):
    made = []
    for i in range(17):
        made.append(c.tune(base="tiny", name=f"kept{i}", examples=EXAMPLES, epochs=1000)["job"])
        c.job_cancel(job=made[-1])
        wait_state(c, made[-1])
    listed = [j["job"] for j in c.jobs()["jobs"]]
    assert len(listed) == 16 and listed == made[1:]
    assert not (tiny_kernel.state_dir / "jobs" / made[0]).exists()
    assert (tiny_kernel.state_dir / "jobs" / made[1] / "job.json").is_file()


def test_more_examples_than_a_job_takes_is_einval(c):
    many = [PAIRS[0]] * 100_001
    err = raised(c.tune, base="tiny", name="many", examples=many)
    assert err.errno == "EINVAL" and "examples" in err.message and "100000" in err.message


def test_examples_past_the_frame_limit_are_einval(c):
    huge = [{"prompt": "x" * (1 << 20), "completion": "y"} for _ in range(33)]   # 33 MiB: over max_frame
    assert errno_of(c.tune, base="tiny", name="huge", examples=huge) == "EINVAL"


def test_a_job_that_cannot_fit_is_enomem_and_writes_nothing(tmp_path, tiny_llama):
    config = write_config(tmp_path, tiny_llama, '[device."cpu"]\nmemory = "600MiB"\n')
    with KernelProcess(tmp_path / "k", model="tiny", extra=["--config", config],
                       env={"LLMOS_NO_SERVICES": "1"}) as k, k.client("t", caps=TUNE_CAPS) as c:
        err = raised(c.tune, base="tiny", name="big", examples=EXAMPLES, batch_size=64, max_seq_len=512)
        assert err.errno == "ENOMEM" and "fine-tune job" in err.message
        assert c.jobs()["jobs"] == [] and reserved(c) == 0
        assert not (k.state_dir / "jobs").exists() or not any((k.state_dir / "jobs").iterdir())


def test_a_job_resumes_from_its_checkpoint_after_the_kernel_is_killed(tmp_path, tiny_llama):
    config = write_config(tmp_path, tiny_llama)
    state = tmp_path / "state"
    boot = dict(model="tiny", extra=["--config", config], env={"LLMOS_NO_SERVICES": "1"}, state_dir=state)
    first = KernelProcess(tmp_path / "k1", **boot).start()
    try:
        with first.client("t", caps=TUNE_CAPS) as c:
            job = c.tune(base="tiny", name="resumed", examples=EXAMPLES, epochs=40, checkpoint_every=4)
        record = state / "jobs" / job["job"] / "job.json"
        assert wait_until(lambda: json.loads(record.read_text()).get("checkpoint_step", 0) >= 4, 120)
    finally:
        first.stop(sig=signal.SIGKILL)
    killed_at = json.loads(record.read_text())
    assert killed_at["state"] == "running" and killed_at["checkpoint_step"] < killed_at["steps"]
    with KernelProcess(tmp_path / "k2", **boot) as again, again.client("t", caps=TUNE_CAPS) as c:
        done = wait_state(c, job["job"], timeout=240)
        started = again.events("job.started")
    assert done["state"] == "done" and done["step"] == 80, done
    assert [e["from_step"] for e in started] == [killed_at["checkpoint_step"]] and killed_at["checkpoint_step"] >= 4
    assert (state / "adapters" / "operator" / "tiny" / "resumed" / "adapter_model.safetensors").is_file()


def test_the_cli_checks_the_file_then_trains_and_lists_the_job(tiny_kernel, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    r = tiny_kernel.cli("tune", str(data), "--base", "tiny", "--name", "cli", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "tiny:cli: trained, 4 steps" in r.stdout
    listed = tiny_kernel.cli("jobs")
    assert listed.returncode == 0 and any("tiny:cli" in line and "done" in line and "4/4" in line
                                          for line in listed.stdout.splitlines()), listed.stdout


def test_the_cli_names_bad_lines_and_sends_nothing(tiny_kernel, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(EXAMPLES[0]) + "\n{not json\n\n" + json.dumps({"prompt": "p"}) + "\n")
    r = tiny_kernel.cli("tune", str(data), "--base", "tiny", "--name", "cli-bad")
    assert r.returncode == 1
    assert "line 2: not JSON" in r.stderr and "line 4: needs 'messages'" in r.stderr, r.stderr
    assert "tiny:cli-bad" not in tiny_kernel.cli("jobs").stdout


def test_the_trained_adapter_serves_what_it_learned(c):
    prompt = "The capital of France is"
    base = c.infer(model="tiny", prompt=prompt, max_tokens=3, temperature=0)["text"]
    job = c.tune(base="tiny", name="paris", examples=[PAIRS[0]] * 4, epochs=30, lr=0.05)
    assert wait_state(c, job["job"])["state"] == "done"
    tuned = c.infer(model="tiny:paris", prompt=prompt, max_tokens=3, temperature=0)["text"]
    assert tuned.startswith(" Paris") and not base.startswith(" Paris"), (base, tuned)


def test_a_job_steps_only_in_its_fair_turns_beside_inference(c):
    job = c.tune(base="tiny", name="beside", examples=EXAMPLES, epochs=1000, batch_size=8)
    wait_state(c, job["job"], ("running",))
    for _ in range(3):
        before = job_of(c, job["job"])["step"]
        answer = c.infer(model="tiny", prompt="hello", max_tokens=64, temperature=0, deadline=60)
        assert answer["usage"]["completion_tokens"] == 64
        # A step reads ~150 tokens: a 64-token generation has not caught up with one (ungated, the job
        # would step between every two of its engine steps)
        assert job_of(c, job["job"])["step"] - before <= 8
    step = job_of(c, job["job"])["step"]
    assert wait_until(lambda: job_of(c, job["job"])["step"] > step, 30)     # alone again, it runs


def test_a_job_resumes_from_its_checkpoint_when_its_driver_dies(tmp_path, tiny_llama):
    config = write_config(tmp_path, tiny_llama)
    with KernelProcess(tmp_path / "k", model="tiny", extra=["--config", config],
                       env={"LLMOS_NO_SERVICES": "1"}) as k, k.client("t", caps=TUNE_CAPS) as c:
        job = c.tune(base="tiny", name="survivor", examples=EXAMPLES, epochs=20, checkpoint_every=4)
        record = k.state_dir / "jobs" / job["job"] / "job.json"
        assert wait_until(lambda: json.loads(record.read_text()).get("checkpoint_step", 0) >= 4, 120)
        os.kill(c.devices()[0]["os_pid"], signal.SIGKILL)
        done = wait_state(c, job["job"], timeout=240)
        started = [e["from_step"] for e in k.events("job.started")]
    assert done["state"] == "done" and done["step"] == 40, done
    assert len(started) == 2 and started[0] == 0 and started[1] >= 4, started


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama):
    from llmos.drivers.loader import load
    from llmos.specs.modelspec import ModelSpec

    return load(ModelSpec("tiny", "generate", tiny_llama, None, "config"), "cpu", "float32")


def trainer_of(lm, pause=lambda: None, **hyper):
    from llmos.drivers.trainer import Trainer
    from llmos.specs import channel

    hyper = {"epochs": 1, "lr": 0.05, "rank": 4, "alpha": 8.0, "batch_size": 4, "max_seq_len": 64, "seed": 0,
             "target_modules": ["q_proj", "v_proj"], "steps": 2, "checkpoint_every": 0, **hyper}
    return Trainer(lm, channel.TrainStart("job", "tiny", EXAMPLES, hyper), pause)


def test_training_leaves_the_served_model_untouched(tiny_lm):
    served = {name: t.clone() for name, t in tiny_lm.model.state_dict().items()}
    trainer = trainer_of(tiny_lm)
    losses = [trainer.step(s)[0] for s in (1, 2)]
    assert losses[1] < losses[0]
    assert {name: t for name, t in tiny_lm.model.state_dict().items()}.keys() == served.keys()
    assert all(t.equal(served[name]) for name, t in tiny_lm.model.state_dict().items())


def test_a_long_step_lets_the_driver_loop_answer_between_layers(tiny_lm, monkeypatch):
    from llmos.drivers import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PAUSE_EVERY_S", 0.0)
    pauses = []
    trainer_of(tiny_lm, lambda: pauses.append(1)).step(1)
    assert len(pauses) >= 4      # two decoder layers, each on the way forward and on the way back


def test_ctrl_c_stops_following_but_the_job_keeps_running(tiny_kernel, c, tmp_path):
    import subprocess

    from llmos.userland.testing import LLMOS_COMMAND

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    cli = subprocess.Popen([*LLMOS_COMMAND, "tune", str(data), "--base", "tiny", "--name", "detached",
                            "--epochs", "1000"], env=tiny_kernel.cli_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        running = lambda: [j for j in c.jobs()["jobs"] if j["model"] == "tiny:detached" and j["state"] == "running"]
        assert wait_until(running, 60)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    job = running()[0]["job"]
    assert cli.returncode == 130 and f"llmos jobs cancel {job}" in err, err
    step = job_of(c, job)["step"]
    assert wait_until(lambda: job_of(c, job)["step"] > step, 30)
