using TorchSharp;

namespace MoFO;

/// <summary>
/// Scalars that live for the whole process. TorchSharp turns a number in a tensor expression (<c>x + 1</c>,
/// <c>x.pow(2)</c>) into a temporary <see cref="Scalar"/> that nothing references once the call has started; when another
/// thread allocates, the garbage collector may finalize it while libtorch still reads it ("toDouble" / "Scalar.h"
/// internal asserts), which happened when two trainings ran on two threads. Code on the training and evaluation paths
/// uses these (or a Scalar held in a <c>using</c> local) instead of implicit conversions.
/// </summary>
public static class Scalars
{
    public static readonly Scalar ZeroL = 0L.ToScalar();
    public static readonly Scalar OneL = 1L.ToScalar();
    public static readonly Scalar Zero = 0.0.ToScalar();
    public static readonly Scalar One = 1.0.ToScalar();
    public static readonly Scalar Two = 2.0.ToScalar();
    public static readonly Scalar True = true.ToScalar();
}
