"""Checks for lesson 10 (retraining with a fooling class)."""
import torch
from torch import nn

from . import Hint, exercise


@exercise("10.1", "relabelling fooling images as the extra class",
          reference="course.retraining.add_fooling_class")
def _add(fn):
    images, labels = torch.rand(12, 1, 4, 4), torch.arange(12) % 10
    fooling = torch.rand(5, 1, 4, 4)
    out = fn(images, labels, fooling, 10)
    if not isinstance(out, tuple) or len(out) != 2:
        raise Hint("return a pair (images, labels).")
    x, y = out
    if len(x) != 17 or len(y) != 17:
        raise Hint("append the fooling images (and one label each) to the training set; keep every real image.")
    if not (torch.equal(x[:12], images) and torch.equal(y[:12].long(), labels)):
        raise Hint("the real images and their labels must stay as they were.")
    if not torch.equal(x[12:], fooling):
        raise Hint("the appended images should be the fooling images.")
    if y.dtype != torch.long:
        raise Hint("labels are class indices: use dtype torch.long.")
    new = y[12:]
    if len(set(new.tolist())) != 1:
        raise Hint("every fooling image gets the same label: they form one class.")
    if int(new[0]) == 11:
        raise Hint("off by one: classes are numbered from 0, so a classifier with n + 1 outputs has indices 0..n.")
    if int(new[0]) < 10:
        raise Hint("that label belongs to a real digit: the fooling class is a new one, after all real classes.")
    if int(new[0]) != 10:
        raise Hint("the label must be a valid index for a classifier with n_classes + 1 outputs.")
    y3 = fn(images, labels % 3, fooling, 3)[1]
    if int(y3[-1]) != 3:
        raise Hint("use n_classes, not a fixed number: the same code serves ImageNet (1000 real classes).")


@exercise("10.2", "an 11th output that keeps what was learnt", reference="course.retraining.widen_classifier")
def _widen(fn):
    torch.manual_seed(0)
    layer = nn.Linear(50, 10)
    before = (layer.weight.detach().clone(), layer.bias.detach().clone())
    new = fn(layer, 1)
    if not isinstance(new, nn.Linear):
        raise Hint("return an nn.Linear.")
    if new.weight.shape == (50, 11):
        raise Hint("nn.Linear stores its weight as (out_features, in_features): the new rows go on the first axis.")
    if new.out_features != 11 or new.in_features != 50 or new.weight.shape != (11, 50):
        raise Hint("the new layer takes the same inputs and has n_new more outputs.")
    if new.bias is None:
        raise Hint("keep the bias.")
    if not (torch.equal(layer.weight.detach(), before[0]) and torch.equal(layer.bias.detach(), before[1])):
        raise Hint("the old layer changed: copy its values into the new layer, do not modify it.")
    if not torch.allclose(new.weight[:10].detach(), before[0]):
        raise Hint("the rows of the old classes must be the trained weights, copied exactly.")
    if not torch.allclose(new.bias[:10].detach(), before[1]):
        raise Hint("the weights are copied, but the old classes' biases are not.")
    if not new.weight.requires_grad:
        raise Hint("the new layer must be trainable (its weight should require gradients).")
    if fn(layer, 3).out_features != 13:
        raise Hint("use n_new: the number of outputs added.")
