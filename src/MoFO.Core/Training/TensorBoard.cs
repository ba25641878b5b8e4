using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Training;

/// <summary>
/// TensorBoard event files of a run, written with TorchSharp's <c>SummaryWriter</c> (the TFRecord format: a length, its
/// masked CRC-32C, a protobuf <c>Event</c>, the data's masked CRC-32C): the scalars of each step under <c>train/…</c>
/// and the held-out loss under <c>eval/loss</c>. Watch a run live with <c>tensorboard --logdir DIR</c>.
/// </summary>
public static class TensorBoard
{
    /// <summary>A writer whose event files go straight into <paramref name="dir"/> (created if missing).</summary>
    public static SummaryWriter Open(string dir)
    {
        Directory.CreateDirectory(dir);
        return utils.tensorboard.SummaryWriter(dir, createRunName: false);
    }

    /// <summary>The scalars of one step (non-finite values, such as a skipped step's, are left out).</summary>
    public static void Write(SummaryWriter w, StepMetrics m, double tokensPerSecond)
    {
        void Scalar(string tag, double? x)
        {
            if (x is double v && double.IsFinite(v)) w.add_scalar(tag, (float)v, m.Step);
        }
        Scalar("train/loss", m.Loss);
        Scalar("train/learning_rate", m.LearningRate);
        Scalar("train/grad_norm", m.GradNorm);
        Scalar("train/updated_fraction", m.UpdatedFraction);
        Scalar("train/tokens_per_second", tokensPerSecond);
        Scalar("train/distance_l2", m.Distance);
        Scalar("eval/loss", m.EvalLoss);
        foreach (var (measure, value) in m.Forgetting ?? new Dictionary<string, double>()) Scalar($"forgetting/{measure}", value);
        Scalar("forgetting/watch_seconds", m.WatchSeconds);
    }
}
