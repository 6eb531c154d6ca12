import subprocess
import sys


def test_import_is_light():
    # `import medres3d` must not pull in torch/monai: the CLI's --help and notebooks start fast.
    code = (
        "import sys, medres3d\n"
        "print(sorted(m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute_names_it():
    import medres3d

    try:
        medres3d.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")
