#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (the README's test command; CI calls it).
# A torch already installed is kept (scripts/torch.sh); one is installed only where none imports.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/torch.sh
source scripts/torch.sh
python -m pip install -q "setuptools>=64" wheel "pybind11>=2.11"
# the C++ kernels must build here: a failure stops the run instead of skipping their tests
AMINET_REQUIRE_EXT=1 python -m pip install -q -c "$TORCH_CONSTRAINTS" --no-build-isolation -e ".[dev]"
# tensorrt-stubs declares a dependency on the tensorrt libs, which are not installable without NVIDIA's
# index; the stubs alone are enough to type-check the Jetson/datacenter engine path.
python -m pip install -q --no-deps tensorrt-stubs
# tritonserver for the serving tests: the binary alone, from the nvidia-pytriton wheel (its Python package
# pins numpy<2, which must not replace the project's numpy)
scripts/install_tritonserver.sh || echo "warning: tritonserver not installed; the serving tests will skip"
# the deployment scripts under export/ are linted by shellcheck (Debian package; its tests skip if absent)
command -v shellcheck >/dev/null || { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; } \
  || echo "warning: shellcheck could not be installed; the shell-lint tests will skip"
# libaminet (the C runtime, tests/test_c_api.py) needs nlohmann/json and OpenSSL's headers, its examples
# libpng (Debian packages; the tests skip, saying so, where they are absent)
{ [ -f /usr/include/nlohmann/json.hpp ] && [ -f /usr/include/openssl/evp.h ] && [ -f /usr/include/png.h ]; } \
  || { apt-get update -qq && apt-get install -y -qq nlohmann-json3-dev libssl-dev libpng-dev >/dev/null; } \
  || echo "warning: nlohmann-json3-dev / libssl-dev / libpng-dev could not be installed; the C runtime tests will skip"
# the C# example of the C runtime is compiled and run with Mono (Debian packages; its test skips without them)
command -v mcs >/dev/null && command -v mono >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq mono-mcs mono-runtime >/dev/null; } \
  || echo "warning: mono-mcs / mono-runtime could not be installed; the C# example's test will skip"
# the station's MQTT tests run a real broker (Debian package; those tests skip if absent)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] \
  || { apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; } \
  || echo "warning: mosquitto could not be installed; the station's MQTT tests will skip"
# the GenICam test runs Aravis' simulated GigE Vision camera (aravis-tools) through PyGObject, which builds
# against the introspection and cairo headers; PyGObject 3.51+ needs girepository-2.0 (glib >= 2.80), newer
# than Debian 12's, hence the bound (the test skips if any of it is missing)
{ command -v arv-fake-gv-camera-0.8 >/dev/null && python -c "import gi" 2>/dev/null; } \
  || { { command -v arv-fake-gv-camera-0.8 >/dev/null || { apt-get update -qq && apt-get install -y -qq \
         gir1.2-aravis-0.8 aravis-tools libgirepository1.0-dev libcairo2-dev pkg-config >/dev/null; }; } \
       && python -m pip install -q "PyGObject<3.51"; } \
  || echo "warning: Aravis / PyGObject could not be installed; the GenICam test will skip"
# the station's live view is tested in a real headless Chromium through Selenium (Debian packages; those
# tests skip if absent)
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
  || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
  || echo "warning: chromium / chromium-driver could not be installed; the live view's browser tests will skip"
# the RTSP test serves a video (encoded by ffmpeg) with GStreamer's RTSP server through PyGObject (Debian
# packages; the test skips if absent)
dpkg -s ffmpeg gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq ffmpeg gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good >/dev/null; } \
  || echo "warning: ffmpeg / GStreamer's RTSP server could not be installed; the RTSP test will skip"
python -m pytest -q -rs "$@"
