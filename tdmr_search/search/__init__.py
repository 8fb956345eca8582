"""The Optuna search around the pipeline: spaces, FLOPs gate, objective, study store. Only this
package imports optuna."""
