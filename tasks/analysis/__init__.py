"""The paper's analyses as figures, ``python -m tasks.analysis <name>``: each writes a PNG and a CSV of the
numbers behind it into ``runs/analysis/<name>/`` (or ``--out``) and prints a summary.

    fig1          Fig. 1 (Sec. 4.2): entropy and normalized gradient norm, Sinkhorn(tau) vs MESH(lambda)
    fig4          Fig. 4 (App. E): the same gradient norms, unnormalized
    fig3          Fig. 3 (App. D): gap to converged Sinkhorn over MESH steps, with and without reusing u, v
    equivariance  App. C: twin slots under a permutation; set- vs exclusively multiset-equivariance
    similarity    App. B: MESH with and without the similarity regulariser on the paper's example
    fig5          Fig. 5 (App. I): the learned MESH objective's derivative after training on random objects
    variants      random objects (Table 1 set-up): SA-MESH with the appendix variants side by side
    sigma_sweep   random objects at sigma 1 ... 0.003, four variants: RMSE and the marginal on the zeros
"""
from . import equivariance, fig1, fig3, fig4, fig5, sigma_sweep, similarity, variants

__all__ = ["ANALYSES"]

# name -> module with add_arguments(parser) and run(args)
ANALYSES = {
    "fig1": fig1,
    "fig4": fig4,
    "fig3": fig3,
    "equivariance": equivariance,
    "similarity": similarity,
    "fig5": fig5,
    "variants": variants,
    "sigma_sweep": sigma_sweep,
}
