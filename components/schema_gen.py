"""SchemaGen that writes the data contract into the inferred schema (components/data_contract.py).

The stock executor infers the schema from the train split (the pipeline
excludes eval, so eval is checked against train rather than describing
itself); then the image and the label are made required, one value each, and
the label's domain is set to exactly the train split's class names, whatever
their number or form. ExampleValidator then reports an eval class unseen in
train as an anomaly (TFDV would not: numeric-looking names get an open
int_domain and more than 100 classes get no domain).
"""

from __future__ import annotations

import os

from tfx.components.schema_gen import executor as schema_gen_executor
from tfx.components.schema_gen.component import SchemaGen
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, json_utils

from components.data_contract import apply_contract, require_complete, split_labels


class ContractSchemaGenExecutor(schema_gen_executor.Executor):
    """The stock inference, then the contract applied with the label domain from the inferred splits."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        super().Do(input_dict, output_dict, exec_properties)
        excluded = set(
            json_utils.loads(exec_properties.get(standard_component_specs.EXCLUDE_SPLITS_KEY) or "null") or []
        )
        stats_artifact = artifact_utils.get_single_instance(
            input_dict[standard_component_specs.STATISTICS_KEY]
        )
        labels: set[str] = set()
        for split in artifact_utils.decode_split_names(stats_artifact.split_names):
            if split in excluded:
                continue
            counted = split_labels(split, stats_artifact_utils.load_statistics(stats_artifact, split).proto())
            require_complete(counted)
            labels |= counted.labels
        path = os.path.join(
            artifact_utils.get_single_uri(output_dict[standard_component_specs.SCHEMA_KEY]),
            schema_gen_executor.DEFAULT_FILE_NAME,
        )
        schema = io_utils.SchemaReader().read(path)
        io_utils.write_pbtxt_file(path, apply_contract(schema, sorted(labels)))


class ContractSchemaGen(SchemaGen):
    """tfx SchemaGen whose schema states the data contract (the label's domain = the train classes)."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ContractSchemaGenExecutor)
