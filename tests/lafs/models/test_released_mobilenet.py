"""The released LAFS landmark network: names and shapes of the released checkpoint, BGR input, min-max to [0, 111]."""

import json

import pytest
import torch

from lafs.errors import DataError
from lafs.models.landmark_predictor import LandmarkPredictor, load_landmark_predictor, save_landmark_predictor
from lafs.models.released_mobilenet import RELEASED_KIND, ReleasedLandmarkNet, minmax_landmarks
from tests.lafs.models.released_reference import released_landmark_network


@pytest.fixture(scope="module")
def network() -> ReleasedLandmarkNet:
    model = ReleasedLandmarkNet()
    model.load_state_dict(released_landmark_network())
    return model.eval()


def test_minmax_hand_values():
    # One min (1) and one max (5) over x and y together: (v - 1) / 4 * 111.
    out = minmax_landmarks(torch.tensor([[1.0, 3.0, 5.0, 2.0], [0.0, -2.0, 2.0, 0.0]]))
    expected = torch.tensor([[[0.0, 55.5], [111.0, 27.75]], [[55.5, 0.0], [111.0, 55.5]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_released_names_and_shapes():
    state = ReleasedLandmarkNet().state_dict()
    # Stem (conv + BN: 6 tensors), 15 bottlenecks of 3 convs + 3 BNs (18 each), 8 with squeeze-excite (2 more each),
    # output_layer.1 (2): 6 + 270 + 16 + 2.
    assert len(state) == 294
    shapes = {
        "stn.features.0.0.weight": (16, 3, 3, 3),
        "stn.features.1.conv.3.weight": (16, 1, 3, 3),  # depthwise
        "stn.features.4.conv.3.weight": (72, 1, 5, 5),
        "stn.features.4.conv.5.fc.0.weight": (18, 72),  # 72 // 4, not rounded up to 24
        "stn.features.4.conv.5.fc.2.weight": (72, 18),
        "stn.features.13.conv.5.fc.0.weight": (168, 672),
        "stn.features.15.conv.7.weight": (160, 960, 1, 1),
        "stn.features.15.conv.8.running_var": (160,),
        "output_layer.1.weight": (392, 160),
        "output_layer.1.bias": (392,),
    }
    assert {name: tuple(state[name].shape) for name in shapes} == shapes
    assert not any(name.startswith("stn.features.16") for name in state)  # no final 1 x 1 conv, pool or classifier
    assert "stn.features.7.conv.5.fc.0.weight" not in state  # bottleneck 7 (240 -> 80) has no squeeze-excite


def test_feature_map_and_residuals():
    backbone = ReleasedLandmarkNet().stn.eval()
    assert backbone(torch.zeros(1, 3, 112, 112)).shape == (1, 160, 4, 4)
    residual = [block.residual for block in backbone.features[1:]]
    assert residual == [True, False, True, False, True, True, False, True, True, True, False, True, False, True, True]


def test_landmarks_span_0_111_and_come_from_the_bgr_image(network):
    ramp = torch.linspace(-1, 1, 112)
    colour = torch.stack([ramp.expand(112, 112), torch.zeros(112, 112), -ramp[:, None].expand(112, 112)])
    rgb = torch.stack([colour, colour.flip(0), torch.rand(3, 112, 112) * 2 - 1])  # red and blue differ
    with torch.no_grad():
        out = network(rgb)
        assert out.shape == (3, 196, 2)
        flat = out.flatten(1)
        assert torch.equal(flat.min(1).values, torch.zeros(3))
        assert torch.equal(flat.max(1).values, torch.full((3,), 111.0))
        # The released network on the BGR image: features -> spatial mean -> Linear -> min-max.
        raw = network.output_layer(network.stn(rgb[:, [2, 1, 0]]).mean(dim=(2, 3)))
        torch.testing.assert_close(out, minmax_landmarks(raw))
        unflipped = minmax_landmarks(network.output_layer(network.stn(rgb).mean(dim=(2, 3))))
        assert (out - unflipped).abs().max() > 1  # pixels: feeding RGB as it is would move the landmarks
        assert (out[0] - out[2]).abs().max() > 1  # and they follow the image


def test_folder_round_trip_through_the_predictor_loader(network, tmp_path):
    save_landmark_predictor(network, tmp_path / "net", {"from": "test"})
    config = json.loads((tmp_path / "net" / "config.json").read_text())
    assert config["kind"] == RELEASED_KIND and config["channel_order"] == "bgr" and config["num_landmarks"] == 196
    loaded = load_landmark_predictor(tmp_path / "net")
    assert isinstance(loaded, ReleasedLandmarkNet) and isinstance(loaded, LandmarkPredictor) and not loaded.training
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), network(images), rtol=0, atol=0)
    assert loaded.cfg.landmark_set == "mediapipe196"


def test_weights_that_do_not_fit_are_one_line(network, tmp_path):
    save_landmark_predictor(network, tmp_path / "net")
    config_path = tmp_path / "net" / "config.json"
    config = json.loads(config_path.read_text())
    config["config"]["landmark_set"] = "mediapipe49"  # 98 outputs, the weights hold 392
    config_path.write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"weights do not fit config\.json") as error:
        load_landmark_predictor(tmp_path / "net")
    assert "\n" not in str(error.value)
