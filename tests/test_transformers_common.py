"""transformers' own common suite on PEM: `ModelTesterMixin` on `PEMModel` / `PEMForUniversalSegmentation` (STDC,
ResNet and timm backbones), `ConfigTester` on `PEMConfig`, `ImageProcessingTestMixin` on both processors. The test
files come from the installed transformers' sdist (`transformers_tests.py`); the testers are ours, written like
Mask2Former's. Every skip says why: a feature PEM cannot have, or a test that needs the Hub."""

import copy
import functools
import math
import unittest
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from parameterized import parameterized
from tiny_configs import TINY_BACKBONES
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
from transformers_tests import transformers_tests_root

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor, PEMImageProcessorPil, PEMModel

transformers_tests_root()

from tests.test_configuration_common import ConfigTester  # noqa: E402
from tests.test_image_processing_common import (  # noqa: E402
    ImageProcessingTestMixin,
    PostProcessSemanticSegmentationTestMixin,
    prepare_image_inputs,
)
from tests.test_modeling_common import (  # noqa: E402
    TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION,
    ModelTesterMixin,
    floats_tensor,
)

# The common tests tell a base model from a head model by transformers' table of base models, where an in-tree PEM
# would be listed (this process only).
MODEL_MAPPING_NAMES.setdefault("pem", "PEMModel")


class PEMModelTester:
    """A tiny PEM and its inputs for the common tests, as Mask2Former's tester builds them."""

    def __init__(self, parent, backbone: str = "stdc", batch_size: int = 2, num_labels: int = 4):
        self.parent = parent
        self.backbone = backbone
        self.batch_size = batch_size
        self.num_labels = num_labels
        self.is_training = True
        self.height, self.width = 64, 96
        self.num_queries = 8
        self.num_targets = 3
        self.hidden_size = 32
        # Pixel-decoder channels equal to hidden_size and no enforced input projections: with them, two layers would
        # leave the third level's projection without a gradient (the gradient tests ask for one on every parameter).
        self.conv_dim = self.hidden_size
        self.num_attention_heads = 4
        self.num_hidden_layers = 2  # decoder layers (the common suite's ceiling)
        # The decoder's self-attention is over the queries.
        self.seq_length = self.num_queries
        # Outputs with output_hidden_states: the backbone's, the pixel decoder's and the transformer decoder's.
        self.num_hidden_states_types = 3

    def get_config(self) -> PEMConfig:
        return PEMConfig(
            backbone_config=copy.deepcopy(TINY_BACKBONES[self.backbone]),
            num_labels=self.num_labels,
            thing_ids=[1, 2],
            num_queries=self.num_queries,
            hidden_dim=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            decoder_layers=self.num_hidden_layers,
            conv_dim=self.conv_dim,
            enforce_input_projection=False,
            mask_dim=16,
            dim_feedforward=32,
            train_num_points=64,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.height, self.width])
        pixel_mask = torch.ones(self.batch_size, self.height, self.width, dtype=torch.long)
        mask_labels, class_labels = self.prepare_labels()
        return self.get_config(), pixel_values, pixel_mask, mask_labels, class_labels

    def prepare_labels(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked targets: binary masks (batch, targets, height, width) and their classes (batch, targets), the same
        for the same seed (the common tests prepare the inputs of a comparison twice)."""
        generator = torch.Generator().manual_seed(seed)
        shape = (self.batch_size, self.num_targets, self.height, self.width)
        mask_labels = (torch.rand(shape, generator=generator) > 0.5).float()
        class_labels = torch.randint(0, self.num_labels, shape[:2], generator=generator)
        return mask_labels, class_labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, pixel_mask, _, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "pixel_mask": pixel_mask}


class _PEMModelTest(ModelTesterMixin):
    all_model_classes = (PEMModel, PEMForUniversalSegmentation)
    pipeline_model_mapping = {}
    backbone = "stdc"
    test_resize_embeddings = False  # no token embeddings
    test_torch_exportable = False  # the export tests are not in the sdist; tests/test_export.py exports PEM

    def setUp(self):
        self.model_tester = PEMModelTester(self, backbone=self.backbone)
        self.config_tester = ConfigTester(self, config_class=PEMConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The common inputs, with stacked targets for the head model when labels are asked for."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is PEMForUniversalSegmentation:
            mask_labels, class_labels = self.model_tester.prepare_labels()
            inputs_dict.update(mask_labels=mask_labels, class_labels=class_labels)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self):
        """PEM's three kinds of hidden states, as Mask2Former's: backbone maps (strides 4 to 32), pixel-decoder levels
        (strides 32, 16, 8) and the queries before and after every decoder layer; asked for by argument or config."""
        tester = self.model_tester
        config, inputs_dict = tester.prepare_config_and_inputs_for_common()
        height, width = tester.height, tester.width
        for model_class in self.all_model_classes:
            for by_config in (False, True):
                model_config = PEMConfig.from_dict(config.to_dict())
                model_config.output_hidden_states = by_config
                model = model_class(model_config).eval()
                with torch.no_grad():
                    outputs = model(**inputs_dict, **({} if by_config else {"output_hidden_states": True}))
                encoder = outputs.encoder_hidden_states
                self.assertEqual(
                    [tuple(feature.shape[-2:]) for feature in encoder],
                    [(math.ceil(height / stride), math.ceil(width / stride)) for stride in (4, 8, 16, 32)],
                )
                self.assertEqual(
                    [tuple(feature.shape) for feature in outputs.pixel_decoder_hidden_states],
                    [
                        (tester.batch_size, tester.conv_dim, height // stride, width // stride)
                        for stride in (32, 16, 8)
                    ],
                )
                self.assertEqual(
                    [tuple(states.shape) for states in outputs.transformer_decoder_hidden_states],
                    [(tester.batch_size, tester.num_queries, tester.hidden_size)] * (tester.num_hidden_layers + 1),
                )

    def test_retain_grad_hidden_states_attentions(self):
        """Gradients of the loss reach every kind of hidden state and the attention weights."""
        config, pixel_values, _, mask_labels, class_labels = self.model_tester.prepare_config_and_inputs()
        config.output_hidden_states = True
        config.output_attentions = True
        model = PEMForUniversalSegmentation._from_config(config, attn_implementation="eager").train()
        outputs = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        retained = [
            outputs.encoder_hidden_states[0],
            outputs.pixel_decoder_hidden_states[0],
            outputs.transformer_decoder_hidden_states[0],
            outputs.attentions[0],
        ]
        for tensor in retained:
            tensor.retain_grad()
        outputs.loss.backward()
        for tensor in retained:
            self.assertIsNotNone(tensor.grad)
            self.assertGreater(tensor.grad.abs().sum().item(), 0)

    def test_model_outputs_equivalence(self):
        """The common test, with the loss's random point sampling drawn alike in every forward pass, so that the tuple
        and dict outputs it compares come from the same points."""
        forward = PEMForUniversalSegmentation.forward

        @functools.wraps(forward)
        def seeded_forward(model, *args, **kwargs):
            torch.manual_seed(0)
            return forward(model, *args, **kwargs)

        with mock.patch.object(PEMForUniversalSegmentation, "forward", seeded_forward):
            super().test_model_outputs_equivalence()

    @parameterized.expand(TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        """The decoder's self-attention through SDPA equals the eager one: final queries and class logits within the
        common test's tolerances."""
        if use_attention_mask:
            self.skipTest(reason="PEM's inputs are images: there is no attention mask to pad")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        if dtype == torch.float16:
            self.skipTest(reason="torchvision's deformable convolution has no float16 kernel on CPU")
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        eager = PEMForUniversalSegmentation._from_config(config, attn_implementation="eager").to(dtype).eval()
        sdpa = PEMForUniversalSegmentation._from_config(config, attn_implementation="sdpa").to(dtype).eval()
        sdpa.load_state_dict(eager.state_dict())
        self.assertEqual(sdpa.config._attn_implementation, "sdpa")
        pixel_values = inputs_dict["pixel_values"].to(dtype)
        with torch.no_grad():
            outputs = [
                model(pixel_values, output_hidden_states=True, output_attentions=output_attentions)
                for model in (eager, sdpa)
            ]
        tolerance = {torch.float32: (1e-6, 1e-4), torch.bfloat16: (1e-2, 1e-2)}[dtype]
        for key in ("transformer_decoder_last_hidden_state", "class_queries_logits"):
            torch.testing.assert_close(outputs[1][key], outputs[0][key], atol=tolerance[0], rtol=tolerance[1])

    def test_model_outputs_and_loss_of_stacked_and_listed_targets(self):
        """Mask2Former's segmentation-head test: output shapes, and the loss of stacked targets equal to per-image
        lists."""
        config, pixel_values, pixel_mask, mask_labels, class_labels = self.model_tester.prepare_config_and_inputs()
        torch.manual_seed(0)
        model = PEMForUniversalSegmentation(config).train()
        tester = self.model_tester
        torch.manual_seed(1)
        stacked = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels, pixel_mask=pixel_mask)
        torch.manual_seed(1)
        listed = model(pixel_values, mask_labels=list(mask_labels), class_labels=list(class_labels))
        self.assertEqual(
            stacked.masks_queries_logits.shape,
            (tester.batch_size, tester.num_queries, tester.height // 4, tester.width // 4),
        )
        self.assertEqual(
            stacked.class_queries_logits.shape, (tester.batch_size, tester.num_queries, tester.num_labels + 1)
        )
        self.assertEqual(stacked.loss.shape, ())
        torch.testing.assert_close(stacked.loss, listed.loss, rtol=0, atol=0)

    @unittest.skip(reason="PEM has no input embeddings (image input)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="PEM has no input embeddings (image input)")
    def test_model_get_set_embeddings(self):
        pass


class PEMSTDCModelTest(_PEMModelTest, unittest.TestCase):
    backbone = "stdc"


class PEMResNetModelTest(_PEMModelTest, unittest.TestCase):
    backbone = "resnet"


@pytest.mark.slow
class PEMTimmModelTest(_PEMModelTest, unittest.TestCase):
    backbone = "timm"


class PEMImageProcessingTester:
    """Settings and inputs of the processor tests, as Mask2Former's image-processing tester has them."""

    def __init__(self, parent, batch_size: int = 3, num_channels: int = 3, num_labels: int = 4):
        self.parent = parent
        self.batch_size = batch_size
        self.num_channels = num_channels
        self.min_resolution = 30
        self.max_resolution = 120
        self.size = {"shortest_edge": 64, "longest_edge": 128}
        self.do_resize = True
        self.do_normalize = True
        self.image_mean = [0.5, 0.5, 0.5]
        self.image_std = [0.5, 0.5, 0.5]
        self.num_labels = num_labels
        self.image_processing_classes = {"torchvision": PEMImageProcessor, "pil": PEMImageProcessorPil}

    def prepare_image_processor_dict(self) -> dict:
        return {
            "size": self.size,
            "do_resize": self.do_resize,
            "do_normalize": self.do_normalize,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        }

    def prepare_image_inputs(self, equal_resolution=False, numpify=False, torchify=False, **kwargs):
        return prepare_image_inputs(
            batch_size=kwargs.get("batch_size", self.batch_size),
            num_channels=kwargs.get("num_channels", self.num_channels),
            min_resolution=self.min_resolution,
            max_resolution=self.max_resolution,
            equal_resolution=equal_resolution,
            numpify=numpify,
            torchify=torchify,
        )

    def expected_output_image_shape(self, images) -> tuple[int, int, int]:
        """The official test-time resize (short side to 64, long side at most 128, rounded half up), then padding
        to the largest image and to a multiple of 32."""
        sizes = []
        for image in images:
            height, width = (image.size[::-1] if hasattr(image, "size") and not hasattr(image, "shape") else None) or (
                image.shape[:2] if image.shape[-1] in (1, 3, 4) else image.shape[-2:]
            )
            scale = min(64 / min(height, width), 128 / max(height, width))
            sizes.append((math.floor(height * scale + 0.5), math.floor(width * scale + 0.5)))
        padded = [math.ceil(max(size[axis] for size in sizes) / 32) * 32 for axis in (0, 1)]
        return self.num_channels, *padded

    def prepare_post_process_semantic_segmentation_inputs(self) -> tuple[dict, dict]:
        """PEM outputs (class and mask logits at stride 4 of a 64x96 input) and the semantic output they give."""
        num_queries = 6
        outputs = SimpleNamespace(
            class_queries_logits=torch.randn(self.batch_size, num_queries, self.num_labels + 1),
            masks_queries_logits=torch.randn(self.batch_size, num_queries, 16, 24),
        )
        return {"outputs": outputs}, {"num_labels": self.num_labels, "height": 64, "width": 96}


class PEMImageProcessingTest(ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = PEMImageProcessingTester
