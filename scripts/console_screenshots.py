"""Screenshots of each view of the web console, for docs/console/ and the README.

Boots a kernel on the default model (SmolLM2-135M, so the chat shows a real answer), a gateway
without keys, asks one question, loads the embedding model, starts a short fine-tune (for the
jobs view), then photographs every view in Debian's Chromium at a desktop's and a phone's width.

    python scripts/console_screenshots.py [--out docs/console]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from playwright.sync_api import sync_playwright

from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess

VIEWS = ["chat", "processes", "devices", "models", "scheduler", "jobs", "services", "audit"]
QUESTION = "In three bullet points, what does an operating system do? Then show `ls -l` in a code block."
EXAMPLES = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
            for a in range(4) for b in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "console"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmos-shots-") as work, ExitStack() as stack:
        kernel = KernelProcess(Path(work) / "k", model="smollm2-135m-instruct").start(timeout=300)
        stack.callback(kernel.stop)
        gw = stack.enter_context(GatewayProcess(kernel.cli_env()))
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(gw.url + "/#chat")
        page.get_by_label("Max tokens").fill("96")
        page.get_by_label("System prompt").fill("You are a concise assistant.")
        page.get_by_label("Message", exact=True).fill(QUESTION)
        page.get_by_label("Message", exact=True).press("Enter")
        print(f"console at {gw.url}; waiting for the answer", flush=True)
        page.locator(".msg.assistant[data-state]").wait_for(timeout=600_000)
        with kernel.client("shots", caps=["tune", "load", "ps"]) as c:
            c.load_model("minilm-l6-v2")
            try:
                c.tune(base="smollm2-135m-instruct", name="arith", examples=EXAMPLES, epochs=3, batch_size=2,
                       max_seq_len=48)
            except Exception as exc:        # the jobs view is then empty; say so, take the rest
                print(f"no fine-tune job: {exc}")
        page.wait_for_timeout(20_000)       # the job takes a few steps; the charts gather points
        for view in VIEWS:
            page.goto(f"{gw.url}/#{view}")
            page.wait_for_timeout(2500)
            if view == "audit":
                page.get_by_role("button", name="Verify").click()
                page.wait_for_timeout(1000)
            page.screenshot(path=str(out / f"{view}.png"))
            print(f"wrote {out / f'{view}.png'}")
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.goto(gw.url + "/#processes")
        phone.wait_for_timeout(2500)
        phone.screenshot(path=str(out / "phone-processes.png"))
        browser.close()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
