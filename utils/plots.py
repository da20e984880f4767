"""Figures: training curves and per-image test panels (matplotlib, no display)."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history, path):
    """Per epoch: training loss terms, validation height errors against the
    mean-height baseline, and validation scores."""
    def series(key):
        values = [h.get(key) for h in history]
        return values if all(isinstance(v, (int, float)) for v in values) else None

    epochs = [h['epoch'] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in sorted({k for h in history for k in h if k.startswith('train_')}):
        if series(key):
            axes[0].plot(epochs, series(key), marker='o', label=key[6:])
    axes[0].set(title='training loss per term (unweighted)', xlabel='epoch', yscale='log')
    for key, style in (('rmse', '-'), ('mae', '-'), ('baseline_rmse', '--'),
                       ('baseline_mae', '--')):
        if series('val_' + key):
            axes[1].plot(epochs, series('val_' + key), style, marker='o', label=key)
    axes[1].set(title='validation height error (m)', xlabel='epoch')
    for key in ('delta1', 'miou', 'oa'):
        if series('val_' + key):
            axes[2].plot(epochs, series('val_' + key), marker='o', label=key)
    axes[2].set(title='validation scores', xlabel='epoch', ylim=(0, 1))
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_test_image(path, image, gt, predictions, title=''):
    """One test image: RGB, ground-truth height, each predicted height
    (`predictions`: label -> map, the last one scored) and its absolute error,
    all on one colour scale in metres with a shared colour bar."""
    import numpy as np
    last = list(predictions.values())[-1]
    error = np.abs(last - gt)
    maps = [('ground truth', gt)] + list(predictions.items()) + [('|error|', error)]
    finite = np.concatenate([m[np.isfinite(m)].ravel() for _, m in maps])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.6),
                             squeeze=False)
    axes = axes[0]
    axes[0].imshow(np.clip(image[..., :3], 0, 1))
    axes[0].set_title('image')
    for ax, (label, m) in zip(axes[1:], maps):
        shown = ax.imshow(m, cmap='viridis', vmin=vmin, vmax=vmax)
        ax.set_title(label)
    for ax in axes:
        ax.axis('off')
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label='metres')
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_prediction(path, image, height, classes=None, colours=None, title='',
                    uncertainty=None):
    """predict.py's preview: image, height (colour bar in metres) and, when
    given, the class map (class indices, -1 for nodata, in `colours` [K, 3]
    uint8, those of the class map's colour table) and the height's sigma
    (metres) side by side. NaN heights and sigmas are nodata (shown blank)."""
    import numpy as np
    panels = 2 + (classes is not None) + (uncertainty is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    axes = axes[0]
    axes[0].imshow(np.clip(image[..., :3], 0, 1))
    axes[0].set_title('image')
    shown = axes[1].imshow(height, cmap='viridis')
    axes[1].set_title('height')
    fig.colorbar(shown, ax=axes[1], shrink=0.8, label='metres')
    if classes is not None:
        shown = np.asarray(colours)[np.maximum(classes, 0)]
        shown[classes < 0] = 255
        axes[2].imshow(shown, interpolation='nearest')
        axes[2].set_title('classes')
    if uncertainty is not None:
        shown = axes[-1].imshow(uncertainty, cmap='magma')
        axes[-1].set_title('uncertainty (sigma)')
        fig.colorbar(shown, ax=axes[-1], shrink=0.8, label='metres')
    for ax in axes:
        ax.axis('off')
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=80, format='png')
    plt.close(fig)
