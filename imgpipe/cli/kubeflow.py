"""`imgpipe compile` and `imgpipe submit`: Kubeflow Pipelines v2 / Vertex AI pipeline specs and jobs.

`compile` takes every `imgpipe run` flag (the config schema) plus where the
spec's artifacts and image live; `submit` sends a compiled spec to Vertex AI.
"""

from __future__ import annotations

import argparse
import hashlib
import re

from imgpipe.cli.flags import container_image
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit
from imgpipe.cli.run import add_run_arguments, config_from
from imgpipe.orchestration.paths import output_file_problem
from pipeline.config import leaves
from trainer.config import field_extra


def reject(args: argparse.Namespace, flags: dict[str, str], why: str) -> None:
    """UsageError naming the first of `flags` (dest -> flag) that was given."""
    for dest, flag in flags.items():
        if getattr(args, dest, None) not in (None, False, []):
            raise UsageError(f"{flag} {why}")


# --------------------------------------------------------------------------- compile
def check_output(path: str) -> None:
    """UsageError naming --output unless a file can be written at `path`, before any work."""
    if not path.strip():
        raise UsageError("--output is empty: give the file to write")
    problem = output_file_problem(path)
    if problem:
        raise UsageError(f"--output {problem}")


# The fields a compiled pipeline takes as parameters (marked runtime in the config schema).
RUNTIME_FIELDS = tuple(name for _, name, model in leaves() if field_extra(model, name, "runtime"))

# TFX's rule for a pipeline name it compiles for Kubeflow Pipelines (its own message for a name
# that breaks it shows '%' instead of the name).
KFP_PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def check_kfp_names(config) -> None:
    """UsageError naming the setting, before TFX loads, for what compiling would refuse later."""
    if not KFP_PIPELINE_NAME.fullmatch(config.pipeline_name):
        raise UsageError(
            f"pipeline_name (--pipeline-name): {config.pipeline_name!r} cannot name a Kubeflow / Vertex AI "
            "pipeline: lower-case letters, digits and '-', starting with a letter or digit "
            f"(e.g. {_kfp_name(config.pipeline_name)!r})"
        )
    if not config.data_dir:
        raise UsageError(
            "data_dir (--data): required (the TFRecord dir the pipeline's steps read, e.g. gs://...)"
        )


def _kfp_name(name: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")[:128] or "imgpipe"


def _add_compile(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compile")
    g.add_argument(
        "--target",
        choices=["kubeflow"],
        default="kubeflow",
        help="kubeflow (the default and only target): a KFP v2 PipelineJob JSON for Vertex AI Pipelines "
        "or Kubeflow Pipelines 2.x",
    )
    g.add_argument(
        "--image",
        required=True,
        type=container_image,
        help="container image built from the Dockerfile (every step runs in it)",
    )
    g.add_argument("--output", required=True, help="pipeline spec file to write (.json)")
    g.add_argument(
        "--pipeline-root",
        help="artifact root, e.g. gs://BUCKET/imgpipe (default: HOME/pipelines/NAME when --home is remote)",
    )
    g.add_argument("--display-name", help="pipeline display name (default: the pipeline name)")
    g.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="accept local data/serving paths (for clusters that mount them at the same path)",
    )
    add_run_arguments(p, local=False, unlisted=("replicas", "metadata", "metadata_password_file"))


def _cmd_compile(args: argparse.Namespace) -> int:
    reject(
        args,
        {
            "lock_file": "--lock-file",
            "lock_wait": "--lock-wait",
            "home_lock_wait": "--home-lock-wait",
            "replicas": "--replicas",
        },
        "does not apply to a compiled pipeline",
    )
    check_output(args.output)
    config = config_from(args)
    check_kfp_names(config)
    from imgpipe.orchestration import kubeflow  # loads TFX: only when the command runs

    try:
        job = kubeflow.compile_pipeline(
            config,
            image=args.image,
            output=args.output,
            pipeline_root=args.pipeline_root,
            display_name=args.display_name,
            allow_local_paths=args.allow_local_paths,
        )
    except ValueError as e:  # ConfigError included
        raise UsageError(str(e)) from e
    except OSError as e:  # the output's disk filled, or its folder went away, after the check above
        raise WorkFailed(f"--output {args.output}: cannot be written: {e.strerror or e}") from e
    with open(args.output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    params = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    emit(
        {
            "output": args.output,
            "image": args.image,
            "pipeline_root": job["runtimeConfig"]["gcsOutputDirectory"],
            "parameters": {name: p.get("defaultValue") for name, p in params.items()},
            "trainer_resources": kubeflow.trainer_resources(job),
            "sha256": digest,
        }
    )
    return 0


# --------------------------------------------------------------------------- submit
def _add_parameter_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help=f"pipeline parameter (repeatable): {', '.join(RUNTIME_FIELDS)}",
    )


def _add_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="GCP project")
    p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    p.add_argument("--spec", required=True, help="pipeline spec from `imgpipe compile`")
    p.add_argument("--service-account", help="service account the pipeline runs as")
    p.add_argument("--display-name", help="job display name (default: the pipeline name)")
    _add_parameter_flag(p)
    p.add_argument(
        "--cache",
        dest="enable_caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the spec's step caching (default: as compiled)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")


def _cmd_submit(args: argparse.Namespace) -> int:
    for flag, value in (("--project", args.project), ("--region", args.region)):
        if not value.strip():
            raise UsageError(f"{flag} is empty")
    from imgpipe.orchestration import kubeflow  # loads TFX: only when the command runs

    try:
        result = kubeflow.submit(
            args.spec,
            project=args.project,
            region=args.region,
            parameters=args.parameter,
            service_account=args.service_account,
            display_name=args.display_name,
            enable_caching=args.enable_caching,
            wait=args.wait,
        )
    except ValueError as e:  # SpecError included
        raise UsageError(str(e)) from e
    except Exception as e:  # a cloud client's error: one line, not its traceback
        message = kubeflow.remote_failure(e)
        if message is not None:
            raise WorkFailed(f"not submitted: {message}") from e
        if isinstance(e, RuntimeError):  # aiplatform reports a failed job (with --wait) so
            raise WorkFailed(f"Vertex AI pipeline job failed: {e}") from e
        raise
    emit(result)
    return 0


COMMANDS = [
    Command(
        "compile",
        "compile the pipeline for Kubeflow Pipelines v2 / Vertex AI (pipeline spec JSON)",
        _add_compile,
        _cmd_compile,
    ),
    Command("submit", "submit a compiled pipeline to Vertex AI Pipelines", _add_submit, _cmd_submit),
]
