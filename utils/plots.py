"""Figures: training curves and per-image test panels (matplotlib, no display)."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history, path):
    """Training loss terms and validation metrics per epoch, one panel each."""
    keys = [k for k in history[0] if k not in ('epoch', 'lr')] if history else []
    train = [k for k in keys if k.startswith('train_')]
    val = [k for k in keys if k.startswith('val_') and
           all(isinstance(h.get(k), (int, float)) for h in history)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h['epoch'] for h in history]
    for k in train:
        axes[0].plot(epochs, [h.get(k) for h in history], marker='o', label=k[6:])
    axes[0].set(title='training loss (per term, unweighted)', xlabel='epoch', yscale='log')
    for k in val:
        axes[1].plot(epochs, [h[k] for h in history], marker='o', label=k[4:])
    axes[1].set(title='validation', xlabel='epoch')
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
