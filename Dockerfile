# The REST service (python -m stages.serve) serving the ONNX export with onnxruntime: no
# TensorFlow in the image. The model is mounted, not copied: models/ is DVC's output
# (dvc repro, or dvc pull), and one image serves whichever model is mounted.
#
#   docker build -t lungct-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/app/models:ro" lungct-serve
#
# docs/deploy.md: what is mounted, the options, serving the Keras model instead.
# The base image by exact tag (Python 3.11.17, Debian 12) and by the digest of its
# multi-architecture index; bump both together (docs/development.md "Dependencies").
FROM python:3.11.17-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements-serve.txt .
# Every package the service installs, pinned and hashed (compiled from requirements-serve.in
# against requirements.lock).
RUN pip install --require-hashes -r requirements-serve.txt
COPY lungct/ lungct/
COPY stages/ stages/
RUN useradd --system --no-create-home lungct
USER lungct

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "stages.serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "models/export/onnx/model.onnx"]
