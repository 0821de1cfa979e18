# imgpipe pipeline image: TFX 1.16's own runtime image plus this package.
#
# Every Kubeflow Pipelines / Vertex AI step runs in it (`imgpipe compile --image`),
# and Dataflow / Flink / Spark use it as the Beam SDK container, so components
# find user code by dotted name (trainer.task.run_fn, trainer.preprocessing.
# preprocessing_fn) in the installed package: nothing is packaged at run time.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/imgpipe:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/imgpipe:TAG
#
# The base tag must equal setup.py's tfx pin (tests/test_kubeflow.py checks it).
FROM gcr.io/tfx-oss-public/tfx:1.16.0

# TFT 1.16 and TFMA 0.47 run Keras 2 (tf-keras); the `imgpipe` CLI sets this,
# but pipeline steps start TFX's container entrypoint, not the CLI.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# setup.py allows Python 3.10 only; fail the build, not a pipeline step, if the base moves.
RUN python -c "import sys; v = sys.version_info[:2]; assert v == (3, 10), f'imgpipe needs Python 3.10, base image has {sys.version}'"

WORKDIR /opt/imgpipe
COPY setup.py requirements.lock ./
COPY imgpipe/ imgpipe/
COPY pipeline/ pipeline/
COPY components/ components/
COPY trainer/ trainer/
COPY serving/ serving/

# The same pinned set as the dev venv (scripts/bootstrap.sh): setup.py's
# requirements resolved under requirements.lock. A regular (not editable)
# install, then a check that the dotted names the pipeline uses import.
RUN python -m pip install --no-cache-dir -c requirements.lock . \
 && cd / \
 && python -c "import trainer.task, trainer.preprocessing, imgpipe.orchestration.kubeflow; print('imgpipe installed')"

# The base image's ENTRYPOINT (Beam's SDK harness boot) is kept so the image
# also works as a Dataflow sdk_container_image; compiled pipeline steps set
# their own command (python -m imgpipe.orchestration.kfp_step, which runs TFX's
# container entrypoint).
WORKDIR /
