from awq_core.config import QuantConfig
from flows.records import RunSettings, default_run_dir, list_runs, model_slug


def test_default_run_dir_is_model_slug_and_config_digest(tmp_path):
    a = RunSettings(model="smollm2-135m", out="o", config=QuantConfig(group_size=64))
    assert default_run_dir(a).parent.name == "runs" and default_run_dir(a).name.startswith("smollm2-135m-")
    assert default_run_dir(a) == default_run_dir(a.model_copy(update={"out": "elsewhere"}))
    assert default_run_dir(a) != default_run_dir(a.model_copy(update={"config": QuantConfig(group_size=32)}))
    assert model_slug("Org/Some_Model") == "org-some-model"
    assert model_slug(str(tmp_path / "model.Q4.gguf")) == "model.q4"


def test_list_runs_skips_what_is_not_a_run(tmp_path):
    (tmp_path / ".cache").mkdir()
    assert list_runs(tmp_path) == [] and list_runs(tmp_path / "missing") == []
