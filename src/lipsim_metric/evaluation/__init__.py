"""Evaluation of perceptual metrics against human judgements (full-reference IQA and 2AFC/JND sets).

Modules, one concern each (none is imported by the core ``lipsim_metric`` package):

* :mod:`~lipsim_metric.evaluation.correlation` -- SRCC, KRCC and PLCC after the 5-parameter logistic fit;
* :mod:`~lipsim_metric.evaluation.iqa_datasets` -- loaders for TID2013, KADID-10k, CSIQ, LIVE release 2, PIPAL and
  a generic CSV of rated pairs, in the layouts of their official distributions;
* :mod:`~lipsim_metric.evaluation.certified_order` -- the share of pairs whose order an l2 budget cannot swap;
* :mod:`~lipsim_metric.evaluation.human_2afc` -- BAPPS 2AFC / JND and NIGHT scoring (natural and certified);
* :mod:`~lipsim_metric.evaluation.iqa` -- scoring with a resumable, shardable cache of distances, and the report.
* :mod:`~lipsim_metric.evaluation.attacks` -- APGD/PGD attacks on 2AFC judgements and on distances, and the
  certificate soundness checks (needs only the core dependencies, so the core's tests may import it);
* :mod:`~lipsim_metric.evaluation.baselines` -- the metrics compared with LipSim (LPIPS, DISTS, SSIM, PSNR, ...);
* :mod:`~lipsim_metric.evaluation.robustness` -- the robustness report (``python -m
  lipsim_metric.evaluation.robustness``);
* :mod:`~lipsim_metric.evaluation.robustness_experiments`, :mod:`~lipsim_metric.evaluation.robustness_output`,
  :mod:`~lipsim_metric.evaluation.retrieval_attack`, :mod:`~lipsim_metric.evaluation.soundness` -- its experiments,
  written outputs, retrieval under attack and certificate soundness checks;
* :mod:`~lipsim_metric.evaluation.pair_agreement` -- agreement with held-out teacher pair labels.

The first three lived in :mod:`lipsim_metric.train` before; the old paths are deprecated aliases
(``docs/changelog.md``).

The IQA command line is ``python -m lipsim_metric.train.evaluate iqa`` (``docs/evaluation.md``).
"""
