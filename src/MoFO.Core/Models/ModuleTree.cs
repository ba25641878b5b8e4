using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// A module that takes a linear layer's place in a model's tree and adds to its output (an adapter, as PEFT's tuner
/// layers do). Its <c>base_layer</c> is the layer it replaced, with the layer's own parameters; its other tensors are
/// the wrapper's own. <see cref="CausalLMModule.ModelParameters"/> and <see cref="CausalLMModule.StateDict"/> list the
/// base layer's parameters under the layer's name (the HF checkpoint key) and leave the wrapper's own out, so that
/// checkpoints read and written while a wrapper is in place keep the model's keys. Because a wrapper is an ordinary
/// submodule, <c>named_modules</c>, <c>parameters</c>, <c>to(device)</c>, dtype casts, <c>train</c>/<c>eval</c> see it.
/// </summary>
public abstract class LinearWrapper : nn.Module<Tensor, Tensor>
{
    /// <summary>The component name of the wrapped layer inside a wrapper.</summary>
    public const string BaseName = "base_layer";

#pragma warning disable IDE1006 // HF/PEFT names
    /// <summary>The wrapped linear layer.</summary>
    protected readonly Linear base_layer;
#pragma warning restore IDE1006

    protected LinearWrapper(string name, Linear baseLayer) : base(name) => base_layer = baseLayer;

    /// <summary>The wrapped linear layer.</summary>
    public Linear Base => base_layer;
}

/// <summary>
/// Puts a module in the place of another in a model's tree, keeping its position (so that <c>named_parameters</c> lists
/// the tensors in the same order): in the owner's registry of submodules and in the owner's field of that component
/// name, which <c>forward</c> reads. The field must be able to hold the new module (the models declare their
/// projections as <c>nn.Module&lt;Tensor, Tensor&gt;</c> for this).
/// </summary>
public static class ModuleTree
{
    static readonly FieldInfo Registry =
        typeof(nn.Module).GetField("_internal_submodules", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new MissingFieldException("TorchSharp's nn.Module._internal_submodules was not found");

    /// <summary>The module at a dotted path below <paramref name="root"/> and its owner.</summary>
    public static (nn.Module Owner, string Name, nn.Module Module) At(nn.Module root, string path)
    {
        var cut = path.LastIndexOf('.');
        var owner = cut < 0 ? root : root.named_modules().FirstOrDefault(m => m.name == path[..cut]).module
                    ?? throw new ArgumentException($"no module '{path[..cut]}' in {root.GetName()}");
        var name = path[(cut + 1)..];
        var module = owner.named_children().FirstOrDefault(c => c.name == name).module
                     ?? throw new ArgumentException($"no submodule '{name}' in '{path[..Math.Max(0, cut)]}'");
        return (owner, name, module);
    }

    /// <summary>Replaces the submodule at <paramref name="path"/> by <paramref name="replacement"/>; returns the old one.</summary>
    public static nn.Module Replace(nn.Module root, string path, nn.Module replacement)
    {
        var (owner, name, old) = At(root, path);
        var field = FieldOf(owner.GetType(), name)
                    ?? throw new ArgumentException($"{owner.GetType().Name} holds '{name}' in no field of that component name");
        if (!field.FieldType.IsInstanceOfType(replacement))
            throw new ArgumentException($"{owner.GetType().Name}.{field.Name} is a {field.FieldType.Name}: it cannot hold a {replacement.GetType().Name}");
        var registry = (TorchSharp.Utils.OrderedDict<string, nn.Module>)Registry.GetValue(owner)!;
        registry[name] = replacement;   // the indexer keeps the entry's position
        field.SetValue(owner, replacement);
        return old;
    }

    static FieldInfo? FieldOf(Type type, string name)
    {
        for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                if (f.ComponentName() == name && typeof(nn.Module).IsAssignableFrom(f.FieldType)) return f;
        return null;
    }
}
