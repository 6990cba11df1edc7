"""The wheel, built and run the way a deployment runs it: installed, away from the source tree.

`./dev wheel-smoke` (`python -m scripts.wheel_smoke`; a stage of .ci/run and the `wheel` job of
.github/workflows/image.yml) runs this after `./dev setup`, since the wheel carries the npm-built
static/vendor/. In a temporary directory it:

1. copies the working tree (what the image's build context holds: .dockerignore's exclusions) and
   builds the wheel there with `pip wheel --no-deps` (isolated build, setup.py's hook), so no
   build/ or *.egg-info lands in the checkout and no stale build/lib leaks into the wheel; checks
   that the wheel holds every module of every package, the templates and static files and the
   entry point; and that a copy without static/vendor/ refuses to build, saying why;
2. installs the wheel with its pinned dependencies into a fresh virtualenv (`pip check` passes);
3. from a directory outside the source tree, with the source tree on no path: every package
   imports from the virtualenv, `python -m django migrate`, a lone manage.py's `migrate --check`
   (the image's /app holds only manage.py), `controlplane-manage collectstatic`, and `check
   --deploy` with production-like settings (as `./dev lint`);
4. `controlplane-manage standalone` on a free port: a token from the generated admin password, a
   vendor file served, a small tinygpt run to `succeeded`, its model downloaded with the sha256
   the API gives, the run's page (signed in through the form) with its stylesheet and preloaded
   chart module, then SIGINT and exit 0;
5. the wheel installed `--no-deps` into a second virtualenv (no Django, no torch): a program
   reports through `workers.sdk` to a pipe, and the JSON lines are checked.

Exit 0 when all pass (`--out DIR` then copies the wheel there); otherwise the failed step, its
output, and exit 1. Standard library only.
"""
