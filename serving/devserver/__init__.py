"""The project's local model server: TF Serving's gRPC API over the Pusher's model dir.

For development and tests, where no `tensorflow_model_server` binary exists.
It implements the stock generated services of `tensorflow_serving.apis`, so
the same client code talks to it and to a real TF Serving. Run it with
`imgpipe serve --model-base-path DIR --model-name NAME` (one model) or
`imgpipe serve --model-config-file FILE` (TF Serving's model config); tests and benchmarks
use `lifecycle.start_in_thread(...)`.

One job per module, each importing only those above it:

- `versions`   integer version directories of a base path, their fingerprints,
               the SignatureDefs in saved_model.pb
- `tensors`    request TensorProtos / tf.Examples <-> numpy arrays, checked
- `inputs`     what inputs may hold: serialized tf.Examples where the contract says
               so, images no larger than the pixel limit (read from headers)
- `loaded`     LoadedVersion: one loaded, warmed-up version; run/predict/classify
- `manager`    ModelManager: one model's versions: its version policy, polling,
               load-before-swap, draining, version states
- `models`     ServedModels: the models of the server's config by name, their version
               labels, config reloads (TF Serving's ServerCore)
- `request_log` sampled Predict/Classify calls as PredictionLog TFRecords, written
               by a background thread from a bounded queue (drops are counted)
- `servicers`  the gRPC servicers and the mapping of errors to statuses
- `lifecycle`  start_server (binds the port before loading), start_in_thread,
               serve() with SIGTERM handling

Settings are `serving.config.ServerConfig`; the errors and their status codes
are in `serving.errors`.
"""
